"""Frame sources for the adapters (MPE through mpe2's rgb_array, SMAX through jaxmarl's init_render) and
make_render_env, which picks the frame source of an env config. Drawing primitives and the grid renderer are in
envs.render. Never imports commformer.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch

from envs.core import EnvConfigError
from envs.pettingzoo import PettingZooVecEnv
from envs.render import BLOCKED, EDGE, FrameSource, as_numpy, draw_graph, draw_labels, edge_segments, with_legend

log = logging.getLogger(__name__)

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

def make_render_env(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> FrameSource:
    """One copy (B=1) of the env config `cfg` with render_frame(env_index, graph, gate) -> [H,W,3] uint8 drawing
    the current state (call it before step()). EnvConfigError naming the families that draw, for any other."""
    from envs.registry import env_params, make_env, validate_env_config

    family = cfg.get("family") if isinstance(cfg, Mapping) else None
    if family == "pettingzoo":
        return pettingzoo_frames(1, device, **env_params(validate_env_config(cfg)))
    env = make_env(cfg, 1, device)
    if family == "smax":
        return SMAXFrames(env)
    if not isinstance(env, FrameSource):
        close = getattr(env, "close", None)
        if close is not None:
            close()
        raise EnvConfigError(f"env.family={family!r} cannot draw frames; families that can: "
                         f"{sorted(RENDERING_FAMILIES)}")
    return env


RENDERING_FAMILIES = ("predator_prey", "predator_capture_prey", "pettingzoo", "smax")
