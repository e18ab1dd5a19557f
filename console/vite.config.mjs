// Builds the console into dist/, which the gateway embeds (host/build/console_assets.rs)
// and serves at /console/. Relative URLs (base './') so it also works behind a
// proxy that adds a prefix; no inlined assets (the page's CSP allows only files
// from its own origin); hashed names under assets/ (served as immutable).
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    target: 'es2022',
    sourcemap: false,
  },
});
