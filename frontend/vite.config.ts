import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vite';

export default defineConfig({
	plugins: [sveltekit()],
	build: { sourcemap: false, chunkSizeWarningLimit: 1024 },
	// `npm run dev` talks to a local `wrenn up` for the API.
	server: {
		proxy: {
			'/v1': { target: 'http://127.0.0.1:8080', ws: true },
			'/health': 'http://127.0.0.1:8080'
		}
	}
});
