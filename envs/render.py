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

make_render_env(cfg, device): one env copy (B=1) of an env config whose render_frame(env_index, graph, gate) draws
the current state. Drawing uses Pillow (matplotlib's dependency; the [plot] extra), SMAX matplotlib; this module
imports them only when it draws. It never imports commformer.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from envs.pettingzoo import PettingZooVecEnv

log = logging.getLogger(__name__)

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

def edge_segments(centres: np.ndarray, graph: np.ndarray, radius: np.ndarray, alive: np.ndarray | None = None,
                  offset: float = 7.0, gap: float = 2.0) -> list[tuple[int, int, tuple[float, float], tuple[float, float]]]:
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


# ---------------------------------------------------------------------------------------------------------------------
# MPE (mpe2) through the PettingZoo adapter
# ---------------------------------------------------------------------------------------------------------------------

def mpe_agent_pixels(raw_env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Agent centres [N,2] (x, y) px and radii [N] px in mpe2's rgb_array frame, in world.agents order.

    mpe2 (SimpleEnv.draw) centres the camera on the origin with range cam_range = max |p_pos| over all entities,
    maps x -> (x / cam_range * W) // 2 * 0.9 + W // 2 and y -> (-y / cam_range * H) // 2 * 0.9 + H // 2 (the image
    is flipped vertically), and draws radius size * 350 (times 0.9 * original_cam_range / cam_range with dynamic
    rescaling)."""
    world = raw_env.world
    poses = np.array([e.state.p_pos for e in world.entities], dtype=float)
    cam_range = float(np.max(np.abs(poses)))
    w, h = raw_env.width, raw_env.height
    scale = 0.9 * raw_env.original_cam_range / cam_range if getattr(raw_env, "dynamic_rescaling", False) else 1.0
    centres, radius = [], []
    for a in world.agents:
        x, y = (float(v) for v in a.state.p_pos)
        centres.append(((x / cam_range) * w // 2 * 0.9 + w // 2, (-y / cam_range) * h // 2 * 0.9 + h // 2))
        radius.append(a.size * 350 * scale)
    return np.array(centres), np.array(radius)


class PettingZooFrames(PettingZooVecEnv):
    """A PettingZooVecEnv whose copies run in this process with render_mode="rgb_array" (workers are ignored);
    render_frame draws copy env_index's frame with the graph's edges over its agents (mpe2's world: agent.state.p_pos;
    other PettingZoo envs: their frame without edges, with a warning)."""

    def __init__(self, num_envs: int, device: torch.device | str, factory: str,
                 kwargs: Mapping[str, Any] | None = None, workers: int = 0, episode_limit: int | None = None) -> None:
        super().__init__(num_envs, device, factory, {**dict(kwargs or {}), "render_mode": "rgb_array"}, 0,
                         episode_limit)
        self._warned = False

    def copy_env(self, env_index: int) -> Any:
        """The ParallelEnv of copy `env_index` (in this process)."""
        group = getattr(self, "group", None)
        if group is None or not 0 <= env_index < len(group.envs):
            raise ValueError(f"env_index={env_index}: no in-process copy (num_envs={self.num_envs})")
        return group.envs[env_index]

    def render_frame(self, env_index: int = 0, graph: Any = None, gate: Any = None) -> np.ndarray:
        """[H,W,3] uint8: copy env_index's rgb_array frame with the graph [N,N] (receiver, sender) drawn over the
        agents and closed gates [N] marked."""
        penv = self.copy_env(env_index)
        frame = penv.render()
        if frame is None:
            raise ValueError(f"env.factory={self.factory!r}: render() returned no frame with render_mode='rgb_array'")
        raw = getattr(penv, "unwrapped", penv)
        if not hasattr(raw, "world"):
            if not self._warned:
                log.warning("%s has no MPE world: its frames show no communication edges", self.factory)
                self._warned = True
            return with_legend(np.asarray(frame, dtype=np.uint8), False, "(no agent positions: edges not drawn)")
        centres, radius = mpe_agent_pixels(raw)
        by_name = {a.name: i for i, a in enumerate(raw.world.agents)}
        order = [by_name[a] for a in self.spec.agent_names]
        live = set(penv.agents)
        alive = np.array([a in live for a in self.spec.agent_names])
        image = draw_graph(np.asarray(frame, dtype=np.uint8), centres[order], radius[order], graph, gate, alive,
                           head=16.0)
        image = draw_labels(image, centres[order], 18, alive)
        return with_legend(image, gate is not None)


def pettingzoo_frames(num_envs: int, device: torch.device | str, **params: Any) -> PettingZooFrames:
    return PettingZooFrames(num_envs, device, **params)


# ---------------------------------------------------------------------------------------------------------------------
# SMAX (JaxMARL)
# ---------------------------------------------------------------------------------------------------------------------

class SMAXFrames:
    """A SMAXVecEnv (forwarded) whose render_frame draws copy env_index with jaxmarl's SMAX.init_render (allies blue,
    enemies green, the previous step's shots grey), the graph's edges between allies and closed gates."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.num_envs, self.device, self.spec = env.num_envs, env.device, env.spec
        self._actions: np.ndarray | None = None  # [B,N] the last step's actions (for the shots)

    def reset(self, seed: int | None = None):
        self._actions = None
        return self.env.reset(seed=seed)

    def step(self, actions: torch.Tensor):
        self._actions = actions.detach().cpu().numpy().copy()
        return self.env.step(actions)

    def close(self) -> None:
        self.env.close()

    def render_frame(self, env_index: int = 0, graph: Any = None, gate: Any = None) -> np.ndarray:
        """[H,W,3] uint8 of copy env_index: jaxmarl's drawing plus the graph [N,N] (receiver, sender) and gates."""
        import jax
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        jenv = self.env.jax_env
        outer = jax.tree_util.tree_map(lambda x: x[env_index], self.env.jax_state)
        state = getattr(outer, "state", outer)  # HeuristicEnemySMAX wraps SMAX's state
        n = self.spec.n_agents
        acts = np.full(n, 4) if self._actions is None else self._actions[env_index]  # 4: stop
        inner = getattr(jenv, "_env", jenv)  # SMAX itself: its agents are the allies, then the enemies
        actions = {a: int(acts[i]) if i < n else 4 for i, a in enumerate(inner.agents)}  # enemies: no shot drawn
        fig = Figure(figsize=(5, 5), dpi=100)  # square: init_render reshapes its raster as (w, h)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        image = inner.init_render(ax, (None, state, actions), 0, int(getattr(state, "step", 0)))
        image.remove()  # init_render also shows its own raster of the axes: drop it and draw on the axes
        pos = np.asarray(state.unit_positions)[:n]
        alive = np.asarray(state.unit_alive)[:n].astype(bool)
        # zoom on the live units (the map is much larger than a battle): a square around them, within the map
        every = np.asarray(state.unit_positions)[np.asarray(state.unit_alive).astype(bool)]
        if len(every):
            centre = (every.min(0) + every.max(0)) / 2
            half = max(float((every.max(0) - every.min(0)).max()) / 2 + 3.0, 5.0)
            ax.set_xlim([centre[0] - half, centre[0] + half])
            ax.set_ylim([centre[1] - half, centre[1] + half])
        ax.set_aspect("equal")
        g, gt = as_numpy(graph), as_numpy(gate)
        rad = np.asarray(jenv.unit_type_radiuses)[np.asarray(state.unit_types)[:n]]
        colour = tuple(v / 255 for v in EDGE)
        if g is not None:
            for _, i, start, tip in edge_segments(pos, g, rad, alive, offset=0.25, gap=0.1):
                delivered = gt is None or bool(gt[i])
                ax.annotate("", xy=tip, xytext=start, arrowprops=dict(
                    arrowstyle="-|>", color=colour if delivered else tuple(v / 255 for v in BLOCKED),
                    lw=2.0 if delivered else 0.8, mutation_scale=14 if delivered else 8))
        for i in np.nonzero(alive)[0]:
            ax.text(pos[i, 0], pos[i, 1] + rad[i] + 0.15, str(i), ha="center", va="bottom", fontsize=9,
                    color="blue", fontweight="bold")
        if gt is not None:
            closed = alive & ~gt
            ax.plot(pos[closed, 0], pos[closed, 1], "x", color="black", markersize=12, markeredgewidth=2.5)
        canvas.draw()
        frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        return with_legend(frame, gt is not None)


# ---------------------------------------------------------------------------------------------------------------------
# One env copy that draws its frames
# ---------------------------------------------------------------------------------------------------------------------

def make_render_env(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
    """One copy (B=1) of the env config `cfg` with render_frame(env_index, graph, gate) -> [H,W,3] uint8 drawing
    the current state (call it before step()). ValueError naming the families that draw, for any other."""
    from envs.registry import env_params, make_env, validate_env_config

    family = cfg.get("family") if isinstance(cfg, Mapping) else None
    if family == "pettingzoo":
        return pettingzoo_frames(1, device, **env_params(validate_env_config(cfg)))
    env = make_env(cfg, 1, device)
    if family == "smax":
        return SMAXFrames(env)
    if not callable(getattr(env, "render_frame", None)):
        close = getattr(env, "close", None)
        if close is not None:
            close()
        raise ValueError(f"env.family={family!r} cannot draw frames; families that can: "
                         f"{sorted(RENDERING_FAMILIES)}")
    return env


RENDERING_FAMILIES = ("predator_prey", "predator_capture_prey", "pettingzoo", "smax")
