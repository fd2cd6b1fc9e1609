"""The one training loop for every env: collect -> update -> log -> evaluate -> checkpoint.

The config is the only switch: envs come from envs.registry.make_env(cfg.env), baselines are algo settings.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from commformer.training.bilevel import Optimisers, choices, phase
from commformer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from commformer.config import Config, from_yaml, to_yaml
from commformer.training.evaluation import EVAL_SEED_OFFSET, evaluate
from commformer.method.graph import CommGraph, messages_per_step
from commformer.training.logger import Logger
from commformer.method.model import CommFormer, ModelShape
from commformer.method.policy import Agent
from commformer.training.ppo import ValueNorm
from commformer.training.rollout import Collector
from commformer.training.update import ppo_update
from envs.core import STEP_TENSORS, Step
from envs.registry import make_env

log = logging.getLogger("commformer")

# Keys a resumed run takes from the command line instead of the checkpoint's config.
RESUME_OVERRIDABLE = ("total_env_steps", "eval_every", "checkpoint_every", "logger", "device", "torch_threads",
                      "run_dir", "resume")


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_agent(cfg: Config, n_agents: int, obs_dim: int, n_actions: int, device: torch.device) -> Agent:
    """The network and graph of a run, initialised from cfg.seed."""
    a = cfg.algo
    torch.manual_seed(cfg.seed)
    model = CommFormer(ModelShape.of(n_agents, obs_dim, n_actions, a))
    graph = CommGraph(n_agents, a.graph, a.sparsity, a.tau, seed=cfg.seed)
    return Agent(model, graph, a.decoder_graph_grad).to(device)


def resumed_config(saved: Config, current: Config) -> Config:
    """The checkpoint's config with the keys of RESUME_OVERRIDABLE taken from the current command."""
    return replace(saved, **{k: getattr(current, k) for k in RESUME_OVERRIDABLE})


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        ckpt = None
        if cfg.resume:
            ckpt = load_checkpoint(cfg.resume, map_location="cpu")
            try:
                cfg = resumed_config(from_yaml(ckpt["config"]), cfg)
            except (KeyError, ValueError) as e:
                raise CheckpointError(f"checkpoint {cfg.resume!r} holds no valid config ({e})") from None
            run_dir = Path(ckpt["run_dir"]) if Path(ckpt.get("run_dir", "")).is_dir() else Path(run_dir)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        torch.set_num_threads(cfg.torch_threads)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r}: CUDA is not available here; allowed: cpu")
        self.device = torch.device(cfg.device)
        self.env = make_env(cfg.env, cfg.num_envs, self.device)
        self.eval_env = make_env(cfg.env, cfg.eval_env_count, self.device)
        spec = self.env.spec
        self.agent = build_agent(cfg, spec.n_agents, spec.obs_dim, spec.n_actions, self.device)
        self.opt = Optimisers.build(self.agent, cfg.algo)
        self.vnorm = ValueNorm().to(self.device) if cfg.algo.value_norm else None
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.collector = Collector(self.env, cfg.rollout_length, cfg.algo.gate, self.device, self.generator)
        self.iteration, self.env_steps = 0, 0
        self.last_eval: dict[str, float] = {}
        self.last_graph: torch.Tensor | None = None
        if ckpt is not None:
            self.restore(ckpt)
        else:
            self.collector.reset(cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        (self.run_dir / "git_revision.txt").write_text(git_revision() + "\n")
        self.logger = Logger(cfg.logger, self.run_dir, OmegaConf.to_container(OmegaConf.structured(cfg)),
                             cfg.total_env_steps, self.run_name, start_env_steps=self.env_steps,
                             resume_iteration=self.iteration if ckpt is not None else None)

    @property
    def run_name(self) -> str:
        return f"{self.cfg.env['name']}_{self.cfg.algo.name}_s{self.cfg.seed}"

    # ---- state ------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs (tensors, numbers, strings: loadable with weights_only=True)."""
        cur = self.collector.current
        state: dict[str, Any] = {
            "config": to_yaml(self.cfg), "run_dir": str(self.run_dir.resolve()),
            "iteration": self.iteration, "env_steps": self.env_steps,
            "model": self.agent.model.state_dict(), "graph": self.agent.graph.state_dict(),
            "optimisers": self.opt.state_dict(),
            "value_norm": None if self.vnorm is None else self.vnorm.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "current_step": None if cur is None else {k: getattr(cur, k).cpu() for k in STEP_TENSORS},
            "env": self.env.state_dict() if hasattr(self.env, "state_dict") else None,
        }
        return state

    def restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.agent.model.load_state_dict(ckpt["model"])
            self.agent.graph.load_state_dict(ckpt["graph"])
            self.opt.load_state_dict(ckpt["optimisers"])
            if self.vnorm is not None:
                self.vnorm.load_state_dict(ckpt["value_norm"])
            self.generator.set_state(ckpt["rng"]["generator"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            self.iteration, self.env_steps = int(ckpt["iteration"]), int(ckpt["env_steps"])
            if self.agent.graph.learned:  # as iterate() left it after the update that preceded the save
                self.last_graph = self.agent.graph.deterministic()
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).splitlines()[0][:200]
            raise CheckpointError(f"checkpoint does not match this run's model/env ({first})") from None
        if ckpt.get("env") is not None and hasattr(self.env, "load_state_dict") and ckpt.get("current_step"):
            self.env.load_state_dict(ckpt["env"])
            cur = {k: v.to(self.device) for k, v in ckpt["current_step"].items()}
            self.collector.current = Step(**cur, episode={})
        else:  # the env cannot restore its state: start fresh episodes, seeded by the iteration
            log.warning("env %s cannot save its state: resumed run starts new episodes", self.cfg.env["name"])
            self.collector.reset(self.cfg.seed + 7919 * self.iteration)

    def save(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.state())

    # ---- loop -------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.agent.eval()
        ph = phase(max(self.iteration - 1, 0), self.cfg.iterations, self.cfg.algo)
        graph_how, gate_how = choices(ph, evaluating=True)
        out = evaluate(self.agent, self.eval_env, self.cfg.seed + EVAL_SEED_OFFSET, self.device, graph_how, gate_how,
                       episodes=self.cfg.eval_episode_count)
        self.agent.train()
        return out

    def iterate(self) -> dict[str, Any]:
        """One iteration: rollout, update, and the row of metrics for it."""
        cfg = self.cfg
        ph = phase(self.iteration, cfg.iterations, cfg.algo)
        graph_how, gate_how = choices(ph, evaluating=False)
        denorm = self.vnorm.denormalize if self.vnorm is not None else (lambda x: x)
        t0 = time.perf_counter()
        ro = self.collector.collect(self.agent, graph_how, gate_how, denorm)
        t1 = time.perf_counter()
        stats = ppo_update(self.agent, ro, self.opt, self.vnorm, cfg.algo, cfg.ppo_epochs, ph)
        t2 = time.perf_counter()
        self.iteration += 1
        self.env_steps += cfg.batch_env_steps
        row: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.env_steps}
        episodes = self.collector.pop_finished()
        row["train/episodes"] = int(episodes["return"].numel()) if episodes else 0
        for k in ("return", "length") + tuple(self.env.spec.task_metrics):
            row[f"train/{k}"] = float(episodes[k].mean()) if k in episodes else float("nan")
        T, B, N = ro.alive.shape
        msgs = messages_per_step(ro.graph.view(T * B, N, N), ro.alive.view(T * B, N),
                                 None if ro.gate is None else ro.gate.view(T * B, N))
        row["comm/messages_per_step"] = float(msgs.mean())
        if ro.gate is not None:
            row["comm/gate_open"] = float(ro.gate[ro.alive].float().mean())
        if self.agent.graph.learned:
            det = self.agent.graph.deterministic()
            prev = self.last_graph
            # senders swapped in the deterministic graph since the last iteration
            row["comm/graph_changes"] = float("nan") if prev is None else int((det != prev).sum()) // 2
            self.last_graph = det
        margins = self.agent.graph.margins()
        if not bool(torch.isnan(margins).all()):
            row["comm/alpha_margin_min"] = float(margins.min())
            row["comm/alpha_margin_mean"] = float(margins.mean())
        row.update(stats)
        row["perf/rollout_s"] = t1 - t0
        row["perf/update_s"] = t2 - t1
        row["perf/env_steps_per_s"] = cfg.batch_env_steps / (t2 - t0)
        row["perf/rollout_env_steps_per_s"] = cfg.batch_env_steps / (t1 - t0)
        return row

    def train(self) -> dict[str, float]:
        """Run until the budget is spent; returns the final evaluation."""
        cfg = self.cfg
        try:
            if cfg.eval_at_start and self.iteration == 0:
                self.last_eval = self.evaluate()
                self.logger.log({"iteration": 0, "env_steps": 0, **self.last_eval})
            while self.iteration < cfg.iterations:
                row = self.iterate()
                last = self.iteration >= cfg.iterations
                if self.iteration % cfg.eval_every == 0 or last:
                    self.last_eval = self.evaluate()
                    row.update(self.last_eval)
                self.logger.log(row)
                if self.iteration % cfg.checkpoint_every == 0 or last:
                    self.save()
            self.logger.summary(self.summary_lines())
        finally:
            self.logger.close()
            self.close()
        return self.last_eval

    def summary_lines(self) -> list[str]:
        g = self.agent.graph
        lines = [f"run folder: {self.run_dir}", f"env steps: {self.env_steps}  iterations: {self.iteration}"]
        lines += [f"final {k}: {v:.4g}" for k, v in self.last_eval.items()]
        if g.learned:
            det = g.deterministic().int().tolist()
            lines.append(f"graph (k={g.k}, top-k of alpha, row = receiver): {det}")
            m = g.margins()
            if not bool(torch.isnan(m).all()):
                lines.append("alpha row margins (k-th minus (k+1)-th): "
                             + ", ".join(f"{x:.3f}" for x in m.tolist()))
        lines.append(f"checkpoint: {self.run_dir / 'checkpoints' / 'last.pt'}")
        return lines

    def close(self) -> None:
        for env in (self.env, self.eval_env):
            close = getattr(env, "close", None)
            if close is not None:
                close()

