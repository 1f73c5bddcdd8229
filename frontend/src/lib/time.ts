// The API gives some times in Unix ms, others in seconds: tell them apart by size.
const ms = (t: number) => (t > 1e11 ? t : t * 1000);

export function age(t: number | null | undefined): string {
	if (!t) return '—';
	const s = Math.max(0, Math.floor((Date.now() - ms(t)) / 1000));
	if (s < 60) return `${s}s`;
	if (s < 3600) return `${Math.floor(s / 60)}m`;
	if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
	return `${Math.floor(s / 86400)}d`;
}
export function when(t: number | null | undefined): string {
	return t ? new Date(ms(t)).toLocaleString() : '—';
}
export function bytes(n: number): string {
	if (n < 1024) return `${n} B`;
	const u = ['KiB', 'MiB', 'GiB', 'TiB'];
	let v = n / 1024;
	let i = 0;
	while (v >= 1024 && i < u.length - 1) {
		v /= 1024;
		i++;
	}
	return `${v.toFixed(v < 10 ? 1 : 0)} ${u[i]}`;
}
