"""Charts rendered on the server as inline SVG: no JavaScript, no CDN, printable."""

from __future__ import annotations

from html import escape


def _nice_ceiling(value: float) -> int:
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return int(step * magnitude)
    return int(10 * magnitude)


def bar_chart_svg(
    *,
    chart_id: str,
    title: str,
    labels: list[str],
    series: list[tuple[str, list[int], str]],
    width: int = 960,
    height: int = 300,
) -> str:
    """Grouped bars per label (e.g. per day), one colour per series, with axes and a legend."""
    left, right, top, bottom = 64, 16, 40, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_ceiling(max((v for _, values, _ in series for v in values), default=0))
    n = max(len(labels), 1)
    group_w = plot_w / n
    bar_w = max(group_w * 0.8 / max(len(series), 1), 1)
    parts = [
        f'<svg id="{escape(chart_id)}" class="ledger-chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#666">{value:,.0f}</text>'
        )
    for index, label in enumerate(labels):
        x0 = left + index * group_w + group_w * 0.1
        for s_index, (name, values, colour) in enumerate(series):
            value = values[index] if index < len(values) else 0
            bar_h = plot_h * value / peak if peak else 0
            x = x0 + s_index * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
                f'fill="{escape(colour)}"><title>{escape(label)} {escape(name)}: {value:,}</title></rect>'
            )
        if n <= 16 or index % max(n // 12, 1) == 0:
            parts.append(
                f'<text x="{left + (index + 0.5) * group_w:.1f}" y="{height - bottom + 16}" font-size="10" '
                f'text-anchor="middle" fill="#666">{escape(label[5:] if len(label) == 10 else label)}</text>'
            )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#999"/>')
    for s_index, (name, _, colour) in enumerate(series):
        x = left + s_index * 150
        parts.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{escape(colour)}"/>')
        parts.append(f'<text x="{x + 18}" y="20" font-size="12" fill="#333">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
