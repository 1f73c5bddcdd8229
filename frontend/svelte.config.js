import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
export default {
	preprocess: vitePreprocess(),
	kit: {
		// A single-page app: the control plane serves index.html for every page path.
		adapter: adapter({ pages: 'build', assets: 'build', fallback: 'index.html', strict: true }),
		// Absolute asset URLs: index.html is served at deep paths such as /dashboard/sandboxes/x.
		paths: { relative: false },
		version: { pollInterval: 0 }
	}
};
