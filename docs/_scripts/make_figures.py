"""Draw the documentation's figures as hand-written SVG (no plotting library needed).

    python docs/_scripts/make_figures.py            # rewrite docs/_static/*.svg
    python docs/_scripts/make_figures.py --check    # exit 1 if a committed figure is stale

``gaternet.svg`` is the method at a glance.  ``site_policies.svg`` shows which convs of a
basic and a bottleneck block each site policy gates; the gated convs are not drawn from a
list written here but asked of :func:`gatekit.get_gate_sites` on real torchvision blocks,
so the picture changes when the policies do (and ``--check``, run by the docs test,
notices).
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

STATIC = Path(__file__).resolve().parents[1] / "_static"

FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
INK = "#1f2328"
GATER = "#dbe9ff"
BACKBONE = "#e8f5e9"
GATED = "#ffb74d"
PLAIN = "#f5f5f5"
MUTED = "#6e7781"


class Svg:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.items: list[str] = []

    def box(self, x: float, y: float, w: float, h: float, label: str, fill: str = PLAIN,
            size: int = 12, bold: bool = False, dashed: bool = False) -> None:
        dash = " stroke-dasharray='4 3'" if dashed else ""
        self.items.append(
            f"<rect x='{x}' y='{y}' width='{w}' height='{h}' rx='5' fill='{fill}' "
            f"stroke='{INK}' stroke-width='1.2'{dash}/>"
        )
        lines = label.split("\n")
        top = y + h / 2 - (len(lines) - 1) * (size + 2) / 2
        for i, line in enumerate(lines):
            self.text(x + w / 2, top + i * (size + 2), line, size=size, bold=bold and i == 0)

    def text(self, x: float, y: float, s: str, size: int = 12, anchor: str = "middle",
             bold: bool = False, color: str = INK, italic: bool = False) -> None:
        weight = " font-weight='bold'" if bold else ""
        style = " font-style='italic'" if italic else ""
        self.items.append(
            f"<text x='{x}' y='{y}' {FONT} font-size='{size}' text-anchor='{anchor}' "
            f"dominant-baseline='central' fill='{color}'{weight}{style}>{escape(s)}</text>"
        )

    def arrow(self, x1: float, y1: float, x2: float, y2: float, color: str = INK,
              dashed: bool = False) -> None:
        dash = " stroke-dasharray='4 3'" if dashed else ""
        self.items.append(
            f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{color}' "
            f"stroke-width='1.3' marker-end='url(#head)'{dash}/>"
        )

    def path(self, d: str, color: str = INK, arrow: bool = True, dashed: bool = False) -> None:
        dash = " stroke-dasharray='4 3'" if dashed else ""
        head = " marker-end='url(#head)'" if arrow else ""
        self.items.append(f"<path d='{d}' fill='none' stroke='{color}' stroke-width='1.3'{head}{dash}/>")

    def circle(self, x: float, y: float, r: float, label: str, fill: str = "white") -> None:
        self.items.append(
            f"<circle cx='{x}' cy='{y}' r='{r}' fill='{fill}' stroke='{INK}' stroke-width='1.2'/>"
        )
        self.text(x, y, label, size=13, bold=True)

    def render(self, title: str) -> str:
        head = (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width}' height='{self.height}' "
            f"viewBox='0 0 {self.width} {self.height}' role='img'>\n"
            f"<title>{escape(title)}</title>\n"
            "<defs><marker id='head' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
            f"markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='{INK}'/>"
            "</marker></defs>\n"
            f"<rect width='{self.width}' height='{self.height}' fill='white'/>\n"
        )
        return head + "\n".join(self.items) + "\n</svg>\n"


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------


def gaternet_svg() -> str:
    s = Svg(900, 370)
    # Input image.
    s.box(15, 150, 60, 60, "image\nx", fill="white", bold=True)

    # Gater row.
    y, h = 30, 50
    s.text(95, 14, "gater G(x) = D(E(x)): looks at the image first", size=13, anchor="start", bold=True)
    gater = [
        (95, 120, "E: gater trunk\n(any CNN, no\nclassifier)", GATER),
        (240, 70, "f\n(N, h)", "white"),
        (335, 80, "FC1\nh \u2192 b", GATER),
        (440, 60, "ReLU", GATER),
        (525, 80, "FC2\nb \u2192 c", GATER),
        (630, 70, "g\u2032\nlogits", "white"),
        (720, 165, "estimator\ntrain: noisy gates,\nsurrogate gradient\neval: g = 1(g\u2032 > 0)", GATER),
    ]
    for i, (x, w, label, fill) in enumerate(gater):
        s.box(x, y, w, h + (10 if i == 0 else 20 if i == 6 else 0), label, fill=fill, size=11)
        if i:
            px, pw = gater[i - 1][0], gater[i - 1][1]
            s.arrow(px + pw, y + h / 2, x, y + h / 2)
    s.path(f"M 45 150 L 45 {y + h / 2} L 95 {y + h / 2}")
    s.text(388, 100, "D: head of (h + c)\u00b7b weights, bottleneck b (8 in the released code)",
           size=10, color=MUTED)

    # The gate vector, split into one chunk per gated layer.
    gy = 138
    s.text(95, gy - 10, "g \u2208 {0,1}\u1d9c: one flat vector per sample, split in execution order",
           size=11, anchor="start", color=MUTED)
    chunks = [(205, 70, "g\u2081"), (345, 70, "g\u2082"), (485, 70, "g\u2083"), (625, 90, "g_L")]
    x0 = chunks[0][0]
    s.path(f"M 800 {y + h + 20} L 800 {gy + 12} L {chunks[-1][0] + chunks[-1][1]} {gy + 12}")
    bits = "10110100110101101"
    for i, (cx, cw, label) in enumerate(chunks):
        fill = GATED
        s.items.append(
            f"<rect x='{cx}' y='{gy}' width='{cw}' height='24' fill='{fill}' stroke='{INK}' "
            "stroke-width='1.2'/>"
        )
        s.text(cx + cw / 2, gy + 12, f"{label}: {bits[i * 3:i * 3 + 5]}", size=11)
        s.arrow(cx + cw / 2, gy + 24, cx + cw / 2, 232)
    s.text((chunks[2][0] + chunks[2][1] + chunks[3][0]) / 2, gy + 12, "\u2026", size=14)
    s.text(x0 - 8, gy + 12, "offset 0", size=10, anchor="end", color=MUTED)

    # Backbone row.
    by, bh = 240, 70
    s.text(95, 335, "backbone: the CNN that predicts", size=13, anchor="start", bold=True)
    s.text(95, 355, "each gated layer's output channels are multiplied by its chunk: "
           "O(x) = \u03c6(F \u2217 I(x)) \u00b7 g, broadcast over height and width",
           size=11, anchor="start", color=MUTED)
    s.box(95, by, 80, bh, "stem", fill=BACKBONE)
    blocks = [(205, "block 1"), (345, "block 2"), (485, "block 3"), (625, "block L")]
    prev = 175
    for i, (bx, name) in enumerate(blocks):
        w = 70 if i < 3 else 90
        s.box(bx, by, w, bh, f"{name}\nconv+BN\n\u2299 g", fill=BACKBONE, size=11)
        s.arrow(prev, by + bh / 2, bx, by + bh / 2)
        prev = bx + w
    s.text(600, by + bh / 2, "\u2026", size=14)
    s.box(745, by + 10, 80, 50, "classifier", fill=BACKBONE, size=11)
    s.arrow(715, by + bh / 2, 745, by + bh / 2)
    s.arrow(825, by + bh / 2, 870, by + bh / 2)
    s.text(885, by + bh / 2, "y", size=14, bold=True)
    s.path(f"M 45 210 L 45 {by + bh / 2} L 95 {by + bh / 2}")
    return s.render("GaterNet: a gater network chooses the backbone's filters per image")


# --------------------------------------------------------------------------------------
# Site policies, asked of the code
# --------------------------------------------------------------------------------------

POLICIES = ("residual", "inner", "all")


def gated_convs() -> dict[str, dict[str, set[str]]]:
    """For each block kind and policy, the names (conv1, conv2, conv3, downsample) gated."""
    import torch
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck

    import gatekit

    def model(block: type[nn.Module]) -> nn.Module:
        inp, width = 8, 8
        out = width * block.expansion
        down = nn.Sequential(nn.Conv2d(inp, out, 1, stride=2, bias=False), nn.BatchNorm2d(out))
        return nn.Sequential(
            nn.Conv2d(3, inp, 3, padding=1, bias=False),
            block(inp, width, stride=2, downsample=down),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(out, 10),
        )

    result: dict[str, dict[str, set[str]]] = {}
    for kind, block in (("basic", BasicBlock), ("bottleneck", Bottleneck)):
        net = model(block).eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, 8, 8))
        result[kind] = {}
        for policy in POLICIES:
            names = {site.name for site in gatekit.get_gate_sites(net, sites=policy)}
            # "1.conv2" -> "conv2", "1.downsample.0" -> "downsample"; the stem is "0".
            result[kind][policy] = {n.split(".")[1] if n.startswith("1.") else "stem" for n in names}
    return result


def site_policies_svg(gated: dict[str, dict[str, set[str]]]) -> str:
    col_w, row_h = 285, 300
    s = Svg(60 + col_w * len(POLICIES), 95 + 2 * row_h)
    for j, policy in enumerate(POLICIES):
        s.text(60 + col_w * j + col_w / 2, 22, f'sites="{policy}"', size=14, bold=True)
    layers = {
        "basic": [("conv1", "conv1 3\u00d73 + BN + ReLU"), ("conv2", "conv2 3\u00d73 + BN")],
        "bottleneck": [
            ("conv1", "conv1 1\u00d71 + BN + ReLU"),
            ("conv2", "conv2 3\u00d73 + BN + ReLU"),
            ("conv3", "conv3 1\u00d71 + BN"),
        ],
    }
    for i, kind in enumerate(("basic", "bottleneck")):
        top = 45 + i * row_h
        s.items.append(
            f"<text x='22' y='{top + row_h / 2 - 10}' {FONT} font-size='14' font-weight='bold' "
            f"text-anchor='middle' fill='{INK}' transform='rotate(-90 22 {top + row_h / 2 - 10})'>"
            f"{kind} block</text>"
        )
        for j, policy in enumerate(POLICIES):
            on = gated[kind][policy]
            x = 60 + col_w * j + 20
            y = top + 10
            s.box(x, y, 140, 26, "block input", fill="white", size=11)
            prev_y = y + 26
            step = 215 / (len(layers[kind]) + 1)
            for name, label in layers[kind]:
                y += step if len(layers[kind]) == 3 else 62
                s.arrow(x + 70, prev_y, x + 70, y)
                fill = GATED if name in on else PLAIN
                s.box(x, y, 140, 30, label, fill=fill, size=10)
                if name in on:
                    s.text(x + 147, y + 15, "\u2299 g", size=12, anchor="start", bold=True)
                prev_y = y + 30
            add_y = top + 250
            s.arrow(x + 70, prev_y, x + 70, add_y - 11)
            s.circle(x + 70, add_y, 11, "+")
            # Shortcut: a strided 1x1 conv + BN.
            sx, sy = x + 190, top + 120
            fill = GATED if "downsample" in on else PLAIN
            s.box(sx, sy, 62, 40, "shortcut\n1\u00d71 + BN", fill=fill, size=9)
            if "downsample" in on:
                s.text(sx + 31, sy + 52, "\u2299 g", size=12, bold=True)
            s.path(f"M {x + 140} {top + 23} L {sx + 31} {top + 23} L {sx + 31} {sy}")
            s.path(f"M {sx + 31} {sy + 40} L {sx + 31} {add_y} L {x + 81} {add_y}")
            s.text(x + 70, add_y + 24, "ReLU \u2192 next block", size=10, color=MUTED)
    foot = 60 + 2 * row_h
    s.items.append(
        f"<rect x='60' y='{foot - 8}' width='26' height='16' rx='3' fill='{GATED}' stroke='{INK}'/>"
    )
    s.text(94, foot, "gated conv: \u2299 g multiplies the output of its BN, before the ReLU and "
           "before the residual addition (one gate per output channel)", size=11, anchor="start")
    s.text(60, foot + 22, "asked of gatekit.get_gate_sites on torchvision's BasicBlock and "
           "Bottleneck with a strided 1\u00d71 shortcut; the stem is never gated",
           size=10, anchor="start", color=MUTED)
    return s.render("Which convs each site policy gates in a basic and a bottleneck block")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    p.add_argument("--only", choices=("gaternet", "site_policies"), help="draw one figure only")
    args = p.parse_args()
    figures = {}
    if args.only in (None, "gaternet"):
        figures["gaternet.svg"] = gaternet_svg
    if args.only in (None, "site_policies"):
        figures["site_policies.svg"] = lambda: site_policies_svg(gated_convs())
    stale = []
    for name, draw in figures.items():
        svg, path = draw(), STATIC / name
        if args.check:
            if not path.exists() or path.read_text() != svg:
                stale.append(name)
        else:
            path.write_text(svg)
            print(f"wrote {path} ({len(svg)} bytes)")
    if stale:
        print(f"stale figures: {', '.join(stale)}; run python docs/_scripts/make_figures.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
