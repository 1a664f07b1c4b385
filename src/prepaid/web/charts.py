"""Charts drawn as SVG on the server: no script, no library, nothing fetched. Every label is escaped (a name
holding ``<script>`` or SVG markup shows as text), and every coordinate is computed here from integers.

``stacked_bars`` draws one bar per category (a day, a status, a customer) with one coloured segment per
series (meters, currencies, kinds of movement); a single series is a plain bar chart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup

PALETTE = ("#1d4ed8", "#15803d", "#b45309", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#9d174d")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 16, 48


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``value`` (a round top for the axis)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def stacked_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    title: str,
    format_value: Callable[[int], str] = str,
) -> Markup:
    """An SVG bar chart: ``series[name][i]`` is the height of ``name``'s segment in ``categories[i]``.
    Negative values count as zero. ``title`` is the accessible name."""
    names = list(series)
    totals = [sum(max(0, series[name][index]) for name in names) for index in range(len(categories))]
    top = _nice_ceiling(max(totals, default=0))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    slot = plot_width / max(1, len(categories))
    bar = max(2.0, slot * 0.7)
    parts: list[Markup] = [
        Markup(
            '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}" '
            'xmlns="http://www.w3.org/2000/svg"><title>{}</title>'
        ).format(WIDTH, HEIGHT, title, title)
    ]
    ticks = next(count for count in (4, 5, 2, 1) if top % count == 0)  # whole-number gridlines only
    for tick in range(ticks + 1):
        value = top * tick // ticks
        y = f"{TOP + plot_height - plot_height * tick / ticks:.1f}"
        parts.append(
            Markup(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#e2e8f0"/>'
                '<text x="{}" y="{}" text-anchor="end">{}</text>'
            ).format(LEFT, WIDTH - RIGHT, y, y, LEFT - 6, f"{float(y) + 4:.1f}", format_value(value))
        )
    label_every = max(1, len(categories) // 12)
    for index, category in enumerate(categories):
        x = LEFT + slot * index + (slot - bar) / 2
        base: float = TOP + plot_height
        for series_index, name in enumerate(names):
            value = max(0, series[name][index])
            if value == 0:
                continue
            height = plot_height * value / top
            base -= height
            parts.append(
                Markup(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} · {}: {}</title></rect>'
                ).format(
                    f"{x:.1f}",
                    f"{base:.1f}",
                    f"{bar:.1f}",
                    f"{height:.1f}",
                    colour(series_index),
                    category,
                    name,
                    format_value(value),
                )
            )
        if index % label_every == 0:
            parts.append(
                Markup('<text x="{}" y="{}" text-anchor="middle">{}</text>').format(
                    f"{x + bar / 2:.1f}", HEIGHT - BOTTOM + 16, category[:12]
                )
            )
    if not categories:
        parts.append(
            Markup('<text x="{}" y="{}" text-anchor="middle">Nothing in this period</text>').format(
                WIDTH // 2, HEIGHT // 2
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def legend(names: Sequence[str]) -> Markup:
    """The colour key for ``stacked_bars`` drawn with the same series names in the same order (the colours
    are classes in app.css: the pages' CSP allows no inline style)."""
    items = Markup("").join(
        Markup('<span><i class="s{}"></i>{}</span>').format(index % len(PALETTE), name)
        for index, name in enumerate(names)
    )
    return Markup('<div class="legend">{}</div>').format(items)
