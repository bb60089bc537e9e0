"""Collapsed stacks (py-spy's raw format: 'outer;...;inner count' per line) to speedscope JSON and an SVG flame graph.

One py-spy recorder writes the raw stacks; both views are made from them, so the trainer is sampled
once instead of twice.
"""

import html
import json
import zlib

from profiling.stats import counted


def read_collapsed(text):
    """[(frames outermost first, count)] from collapsed-stack lines."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def to_speedscope(stacks, name="irnscope trainer", unit_ms=None):
    """A speedscope 'sampled' profile; weights are sample counts (or ms when unit_ms is the sample period)."""
    frames, index = [], {}
    samples, weights = [], []
    for stack, count in stacks:
        ids = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                frames.append({"name": frame})
            ids.append(index[frame])
        samples.append(ids)
        weights.append(count * unit_ms if unit_ms else count)
    total = sum(weights)
    profile = {
        "type": "sampled",
        "name": name,
        "unit": "milliseconds" if unit_ms else "none",
        "startValue": 0,
        "endValue": total,
        "samples": samples,
        "weights": weights,
    }
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [profile],
        "name": name,
        "exporter": "irnscope",
    }


def _tree(stacks):
    root = {"name": "all", "count": 0, "children": {}}
    for stack, count in stacks:
        root["count"] += count
        node = root
        for frame in stack:
            node = node["children"].setdefault(frame, {"name": frame, "count": 0, "children": {}})
            node["count"] += count
    return root


def _colour(name):
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{30 + (h >> 16) % 40})"


def to_svg(stacks, title="irnscope trainer", width=1200, row=16):
    """A flame graph: the root at the bottom, each frame as wide as its share of the samples."""
    root = _tree(stacks)
    total = max(root["count"], 1)
    rects, depth_max = [], 0

    def place(node, x, depth):
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        w = node["count"] / total * width
        if w >= 0.3:
            rects.append((x, depth, w, node["name"], node["count"]))
        cx = x
        for child in sorted(node["children"].values(), key=lambda n: n["name"]):
            place(child, cx, depth + 1)
            cx += child["count"] / total * width

    place(root, 0.0, 0)
    height = (depth_max + 1) * row + 40
    parts = [
        '<?xml version="1.0" standalone="no"?>',
        f'<svg version="1.1" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        'font-family="monospace" font-size="11">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">'
        f"{html.escape(title)} ({counted(total, 'sample')})</text>",
    ]
    for x, depth, w, name, count in rects:
        y = height - (depth + 1) * row
        label = html.escape(name[: int(w / 7)]) if w > 21 else ""
        parts.append(
            f"<g><title>{html.escape(name)} ({counted(count, 'sample')}, {count / total:.1%})</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{_colour(name)}"/>'
            f'<text x="{x + 3:.1f}" y="{y + row - 4}">{label}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def convert(raw_path, speedscope_path, svg_path, rate_hz):
    stacks = read_collapsed(raw_path.read_text())
    speedscope_path.write_text(json.dumps(to_speedscope(stacks, unit_ms=1000 / rate_hz)))
    svg_path.write_text(to_svg(stacks))
    return sum(count for _, count in stacks)
