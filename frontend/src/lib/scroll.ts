// A table's scrolling wrapper (narrow screens) must be reachable by keyboard: a focusable,
// named region (WCAG 2.1.1; axe's scrollable-region-focusable).
export function scrollRegion(node: HTMLElement, label: string) {
	node.tabIndex = 0;
	node.setAttribute('role', 'region');
	node.setAttribute('aria-label', label);
	return {
		update(next: string) {
			node.setAttribute('aria-label', next);
		}
	};
}
