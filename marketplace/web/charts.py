"""The seller dashboard's charts as SVG geometry computed on the server (no script, no
CDN; the page draws them with plain <polyline> and <rect>), with the numbers beside."""

from __future__ import annotations

from typing import Any

from marketplace.catalog.units import format_units


def earnings_chart(points: list[tuple[int, int]], unit: tuple[int, str] | None) -> dict[str, Any]:
    """Cumulative earnings by block as an SVG step line in a 600x200 box: flat at 0
    before the first sale, a step up at each block with sales, flat to the right edge."""
    if not points:
        return {"points": "", "empty": True}
    width, height, pad = 600, 200, 10
    first, last = points[0][0], points[-1][0]
    top = max(v for _, v in points) or 1
    # one sale still gets a visible step: the first block sits a little right of the axis
    span = max(last - first, 1)
    left = pad + (width - 2 * pad) * 0.05

    def x(block: int) -> float:
        return left + (block - first) / span * (width - pad - left) * 0.9

    def y(value: int) -> float:
        return height - pad - value / top * (height - 2 * pad)

    coords, level = [f"{pad},{y(0):.1f}"], y(0)
    for block, value in points:
        coords.append(f"{x(block):.1f},{level:.1f}")
        level = y(value)
        coords.append(f"{x(block):.1f},{level:.1f}")
    coords.append(f"{width - pad},{level:.1f}")
    shown = format_units(top, unit[0]) + " " + unit[1] if unit else f"{top} units"
    return {
        "points": " ".join(coords),
        "empty": False,
        "first": first,
        "last": last,
        "top": shown,
        "table": [(b, format_units(v, unit[0]) if unit else str(v)) for b, v in points[-20:]],
    }


def served_bars(days: list[tuple[Any, int]]) -> dict[str, Any]:
    """Calls served per day as SVG bars in a 600x120 box (the newest 60 days; a bar is
    at most 40 wide, so a few days do not fill the box)."""
    days = days[-60:]
    if not days:
        return {"bars": [], "empty": True}
    width, height = 600, 120
    top = max(n for _, n in days) or 1
    step = min(width / len(days), 44)
    bars = [
        {
            "x": round(i * step + 4, 1),
            "w": round(max(step - 4, 1), 1),
            "h": round(n / top * (height - 10), 1),
            "y": round(height - n / top * (height - 10), 1),
            "label": f"{day.isoformat()}: {n} calls",
        }
        for i, (day, n) in enumerate(days)
    ]
    return {"bars": bars, "empty": False, "top": top, "table": days[-20:]}
