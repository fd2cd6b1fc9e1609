"""Episode frames with the communication graph drawn on them: RGB arrays [H,W,3] uint8.

Shape letters: N agents, H x W pixels. A graph is [N,N] bool, receiver i (row) listens to sender j (column): it is
drawn as an arrow sender j -> receiver i. gate [N] bool: receiver i's temporal gate is open (None: no gate).
An edge into a receiver whose gate is closed carries no message: it is drawn thin and grey, and the agent is marked
(a black ring with a slash). Agents that are not alive send and receive nothing.

- Grid envs (Predator-Prey family, envs.predator_prey): grid_frame() draws the grid, the prey, every predator's
  vision window and the agents (predators round, capture agents square) from a GridScene; the envs'
  render_frame(env_index, graph, gate) calls it.
- MPE (mpe2 through envs.pettingzoo): PettingZooFrames builds the env copies with render_mode="rgb_array" and draws
  the edges over mpe2's own frame, at the agents' pixel positions (mpe_agent_pixels: mpe2's camera, from the world
  state agent.state.p_pos).
- SMAX (JaxMARL): SMAXFrames draws a state with the env's own init_render (what jaxmarl's SMAXVisualizer calls) on a
  matplotlib figure, adds the edges there and rasterises it. SMAXVisualizer.animate itself yields no frames: it
  writes a matplotlib animation to a file and opens a window.

envs.render_adapters holds the MPE and SMAX frame sources and make_render_env(cfg, device): one env copy (B=1)
of an env config whose render_frame(env_index, graph, gate) draws the current state. Drawing uses Pillow (matplotlib's dependency; the [plot] extra), SMAX matplotlib; this module
imports them only when it draws. It never imports commformer.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


log = logging.getLogger(__name__)


@runtime_checkable
class FrameSource(Protocol):
    """A VecEnv that draws its frames: what make_render_env returns (the renderers' one declared method)."""

    def render_frame(self, env_index: int = 0, graph: Any = None, gate: Any = None) -> np.ndarray:
        """[H,W,3] uint8 of copy env_index's current state with graph [N,N] bool (receiver, sender) and gate [N]
        bool (None: no gate) drawn on it."""
        ...

_MISSING = "rendering needs Pillow and matplotlib, the [plot] extra: pip install -e '.[plot]'"

WHITE = (255, 255, 255)
GRID_LINE = (200, 200, 200)
PREY = (214, 39, 40)
EDGE = (255, 128, 0)  # a message sender -> receiver
BLOCKED = (110, 110, 110)  # an edge into a receiver whose gate is closed (no message): dashed
CLOSED = (0, 0, 0)  # the mark of a closed gate
# agent colours (no red: the prey; no orange: the edges)
AGENT_COLOURS = ((31, 119, 180), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                 (188, 189, 34), (23, 190, 207), (57, 59, 121), (99, 121, 57))

EDGE_WIDTH = 3
BLOCKED_WIDTH = 2
LEGEND_HEIGHT = 22


def agent_colour(i: int) -> tuple[int, int, int]:
    return AGENT_COLOURS[i % len(AGENT_COLOURS)]


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError(_MISSING) from None
    return Image, ImageDraw, ImageFont


def _font(size: int):
    _, _, ImageFont = _pil()
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def as_numpy(x: Any, dtype: Any = bool) -> np.ndarray | None:
    """A tensor / array / nested list as a numpy array of `dtype` (None stays None)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Edges and marks, on any frame
# ---------------------------------------------------------------------------------------------------------------------

Point = tuple[float, float]


def edge_segments(centres: np.ndarray, graph: np.ndarray, radius: np.ndarray, alive: np.ndarray | None = None,
                  offset: float = 7.0, gap: float = 2.0) -> list[tuple[int, int, Point, Point]]:
    """The arrows of a graph: (sender j, receiver i, start (x, y), tip (x, y)) for every graph[i, j] between live
    agents, from the rim of j's disc to the rim of i's. An edge whose reverse is drawn too is shifted `offset` px to
    its right, so both show; agents closer than their radii plus `gap` get no arrow. centres [N,2] (x, y) px |
    graph [N,N] bool | radius [N] px | alive [N] bool or None."""
    n = len(centres)
    alive = np.ones(n, dtype=bool) if alive is None else alive
    out = []
    for i in range(n):
        for j in range(n):
            if i == j or not graph[i, j] or not (alive[i] and alive[j]):
                continue
            (x0, y0), (x1, y1) = centres[j], centres[i]
            d = math.hypot(x1 - x0, y1 - y0)
            if d <= radius[i] + radius[j] + gap:
                continue  # overlapping agents: no room for an arrow
            ux, uy = (x1 - x0) / d, (y1 - y0) / d
            shift = offset if graph[j, i] else 0.0
            nx, ny = -uy * shift, ux * shift
            out.append((j, i, (x0 + ux * radius[j] + nx, y0 + uy * radius[j] + ny),
                        (x1 - ux * radius[i] + nx, y1 - uy * radius[i] + ny)))
    return out


def draw_arrow(draw: Any, start: tuple[float, float], tip: tuple[float, float], colour: tuple[int, int, int],
               width: int, head: float, dash: float = 0.0) -> None:
    """A straight arrow on a PIL ImageDraw: the shaft (dashes of `dash` px with gaps of 0.7 dash when dash > 0),
    then a filled head of length `head` at `tip`."""
    (x0, y0), (x1, y1) = start, tip
    d = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / d, (y1 - y0) / d
    head = min(head, 0.6 * d)
    bx, by = x1 - ux * head, y1 - uy * head
    if dash <= 0:
        draw.line([(x0, y0), (bx, by)], fill=colour, width=width)
    else:
        t, length = 0.0, d - head
        while t < length:
            e = min(t + dash, length)
            draw.line([(x0 + ux * t, y0 + uy * t), (x0 + ux * e, y0 + uy * e)], fill=colour, width=width)
            t = e + 0.7 * dash
    half = 0.5 * head
    draw.polygon([(x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)], fill=colour)


def draw_graph(image: np.ndarray, centres: Any, radius: Any, graph: Any, gate: Any = None, alive: Any = None,
               head: float = 12.0) -> np.ndarray:
    """image [H,W,3] uint8 with the graph's arrows and the closed-gate marks drawn on (a new array).

    centres [N,2] (x, y) px | radius [N] px (the agents' discs) | graph [N,N] bool (receiver, sender) or None |
    gate [N] bool or None | alive [N] bool or None. Edges into a closed receiver are thin grey (no message)."""
    Image, ImageDraw, _ = _pil()
    centres = np.asarray(centres, dtype=float)
    n = len(centres)
    radius = np.broadcast_to(np.asarray(radius, dtype=float), (n,))
    graph, gate, alive = as_numpy(graph), as_numpy(gate), as_numpy(alive)
    pic = Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(pic)
    if graph is not None:
        segments = edge_segments(centres, graph, radius, alive)
        # blocked edges first, so a message arrow is never hidden under a grey one
        for delivered in (False, True):
            for _, i, start, tip in segments:
                if (gate is None or bool(gate[i])) == delivered:
                    if delivered:
                        draw_arrow(draw, start, tip, EDGE, EDGE_WIDTH, head)
                    else:
                        draw_arrow(draw, start, tip, BLOCKED, BLOCKED_WIDTH, 0.7 * head, dash=6.0)
    if gate is not None:
        for i in range(n):
            if alive is not None and not alive[i]:
                continue
            if not gate[i]:
                (x, y), r = centres[i], radius[i] + 3
                draw.ellipse([x - r, y - r, x + r, y + r], outline=CLOSED, width=3)
                s = r / math.sqrt(2)
                draw.line([(x - s, y + s), (x + s, y - s)], fill=CLOSED, width=3)
    return np.asarray(pic, dtype=np.uint8).copy()


def draw_labels(image: np.ndarray, centres: Any, size: int = 16, alive: Any = None) -> np.ndarray:
    """image [H,W,3] with each live agent's index written at its centre [N,2] (x, y) px (white on a dark disc)."""
    Image, ImageDraw, _ = _pil()
    pic = Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8))
    draw = ImageDraw.Draw(pic)
    font = _font(size)
    alive = as_numpy(alive)
    for i, (x, y) in enumerate(np.asarray(centres, dtype=float)):
        if alive is None or alive[i]:
            draw.text((x, y), str(i), fill=WHITE, font=font, anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(pic, dtype=np.uint8).copy()


def with_legend(image: np.ndarray, gated: bool, text: str | None = None) -> np.ndarray:
    """image [H,W,3] with a strip below it: the key to the edges (and the gate mark) or `text`."""
    Image, ImageDraw, _ = _pil()
    h, w = image.shape[:2]
    pic = Image.new("RGB", (w, h + LEGEND_HEIGHT), WHITE)
    pic.paste(Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(pic)
    y = h + LEGEND_HEIGHT // 2
    font = _font(12)
    if text is not None:
        draw.text((6, y), text, fill=(0, 0, 0), font=font, anchor="lm")
        return np.asarray(pic, dtype=np.uint8).copy()
    draw_arrow(draw, (6, y), (30, y), EDGE, EDGE_WIDTH, 9)
    label = "sender -> receiver"
    draw.text((35, y), label, fill=(0, 0, 0), font=font, anchor="lm")
    if gated:
        x = 35 + draw.textlength(label, font=font) + 12
        draw.ellipse([x, y - 6, x + 12, y + 6], outline=CLOSED, width=2)
        draw.line([(x + 2, y + 4), (x + 10, y - 4)], fill=CLOSED, width=2)
        draw.text((x + 17, y), "gate closed", fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(pic, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------------------------------------
# Grid envs (Predator-Prey family)
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridScene:
    """One grid env's state: positions are (row, col), row 0 at the top (action "up" = row - 1).

    predators [Np] and capture [Nc] (agent order: predators, then capture agents); done [N] bool."""

    dim: int
    vision: int
    predators: tuple[tuple[int, int], ...]
    capture: tuple[tuple[int, int], ...]
    prey: tuple[int, int]
    done: tuple[bool, ...]

    @property
    def agents(self) -> tuple[tuple[int, int], ...]:
        return self.predators + self.capture


def grid_scene(env: Any, env_index: int = 0) -> GridScene:
    """The GridScene of copy `env_index` of a PredatorPrey / PredatorCapturePrey (its public positions)."""
    if not 0 <= env_index < env.num_envs:
        raise ValueError(f"env_index={env_index}; must be in [0, {env.num_envs - 1}]")
    pairs = lambda t: tuple((int(r), int(c)) for r, c in t.tolist())  # noqa: E731
    capture = env.capture_pos[env_index] if hasattr(env, "capture_pos") else torch.zeros(0, 2, dtype=torch.long)
    r, c = env.prey_pos[env_index].tolist()
    return GridScene(int(env.dim), int(env.vision), pairs(env.predator_pos[env_index]), pairs(capture),
                     (int(r), int(c)), tuple(bool(d) for d in env.agent_done[env_index].tolist()))


def grid_geometry(scene: GridScene, cell: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Agent centres [N,2] (x, y) px and radii [N] px: alone in its cell an agent sits at the cell's centre;
    m > 1 agents in one cell sit on a small circle around it."""
    agents = scene.agents
    centres = np.zeros((len(agents), 2))
    radius = np.zeros(len(agents))
    by_cell: dict[tuple[int, int], list[int]] = {}
    for i, pos in enumerate(agents):
        by_cell.setdefault(pos, []).append(i)
    for (r, c), members in by_cell.items():
        cx, cy = margin + (c + 0.5) * cell, margin + (r + 0.5) * cell
        m = len(members)
        for k, i in enumerate(members):
            if m == 1:
                centres[i], radius[i] = (cx, cy), 0.26 * cell
            else:
                a = 2 * math.pi * k / m - math.pi / 2
                centres[i] = (cx + 0.24 * cell * math.cos(a), cy + 0.24 * cell * math.sin(a))
                radius[i] = 0.17 * cell
    return centres, radius


def cell_centre(row: int, col: int, cell: int = 64, margin: int = 8) -> tuple[float, float]:
    """(x, y) px of a cell's centre in a grid_frame() of that cell size and margin."""
    return margin + (col + 0.5) * cell, margin + (row + 0.5) * cell


def grid_frame(scene: GridScene, graph: Any = None, gate: Any = None, cell: int = 64, margin: int = 8,
               legend: bool = True) -> np.ndarray:
    """[H,W,3] uint8: the grid, the prey (red diamond), each predator's (2v+1)^2 vision window (tinted in its
    colour), the agents (predators round, capture agents square, numbered), the graph's arrows and closed gates.
    graph [N,N] bool (receiver, sender) or None | gate [N] bool or None; legend: the key strip below."""
    Image, ImageDraw, _ = _pil()
    side = margin * 2 + scene.dim * cell
    base = Image.new("RGBA", (side, side), WHITE + (255,))
    # vision windows: translucent tints (one layer each, so overlaps mix), clipped to the grid; outlines on top
    lo, hi = margin, margin + scene.dim * cell
    boxes = []
    for i, (r, c) in enumerate(scene.predators):
        x0 = max(lo, margin + (c - scene.vision) * cell)
        y0 = max(lo, margin + (r - scene.vision) * cell)
        x1 = min(hi, margin + (c + scene.vision + 1) * cell)
        y1 = min(hi, margin + (r + scene.vision + 1) * cell)
        boxes.append([x0, y0, x1 - 1, y1 - 1])
        tint = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        ImageDraw.Draw(tint).rectangle(boxes[-1], fill=agent_colour(i) + (34,))
        base = Image.alpha_composite(base, tint)
    outline = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    odraw = ImageDraw.Draw(outline)
    for i, box in enumerate(boxes):
        odraw.rectangle(box, outline=agent_colour(i) + (170,), width=2)
    draw = ImageDraw.Draw(base)
    for k in range(scene.dim + 1):
        p = margin + k * cell
        draw.line([(margin, p), (hi, p)], fill=GRID_LINE, width=1)
        draw.line([(p, margin), (p, hi)], fill=GRID_LINE, width=1)
    base = Image.alpha_composite(base, outline)
    draw = ImageDraw.Draw(base)
    px, py = cell_centre(*scene.prey, cell, margin)
    s = 0.38 * cell
    draw.polygon([(px, py - s), (px + s, py), (px, py + s), (px - s, py)], fill=PREY)
    centres, radius = grid_geometry(scene, cell, margin)
    font = _font(max(9, int(min(radius) * 1.1)))
    n_pred = len(scene.predators)
    for i, ((x, y), rad) in enumerate(zip(centres, radius)):
        box = [x - rad, y - rad, x + rad, y + rad]
        if i < n_pred:
            draw.ellipse(box, fill=agent_colour(i), outline=(0, 0, 0), width=1)
        else:
            draw.rectangle(box, fill=agent_colour(i), outline=(0, 0, 0), width=1)
        draw.text((x, y), str(i), fill=WHITE, font=font, anchor="mm")
    image = np.asarray(base.convert("RGB"), dtype=np.uint8)
    image = draw_graph(image, centres, radius, graph, gate, head=max(8.0, 0.2 * cell))
    return with_legend(image, gate is not None) if legend else image


def render_grid_env(env: Any, env_index: int = 0, graph: Any = None, gate: Any = None) -> np.ndarray:
    """grid_frame() of copy `env_index` of a PredatorPrey / PredatorCapturePrey."""
    return grid_frame(grid_scene(env, env_index), graph, gate)


