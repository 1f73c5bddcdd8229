// A client-side app: the control plane serves the same index.html for every page.
export const ssr = false;
export const prerender = false;
export const trailingSlash = 'never';
