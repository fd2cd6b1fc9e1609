"""The one training loop for every env and policy: collect -> update -> log -> evaluate -> checkpoint.

The config is the only switch: envs come from envs.registry.make_env(cfg.env), the policy from
commformer.policies.build_policy(cfg.algo) and the loop talks to it through commformer/protocol.py.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import OmegaConf

from commformer.config import RESUME_RESEED_STRIDE, AlgoConfig, Config
from commformer.hydra_glue import to_yaml
from commformer.errors import TrainingStopped
from commformer.policies import build_policy
from commformer.training.checkpoint import CheckpointError, non_finite, remove_stale_temps, save_checkpoint
from commformer.training.evaluation import EVAL_SEED_OFFSET, evaluate_with_details
from commformer.training.graph_history import GraphHistory, graph_record
from commformer.training.logger import Logger
from commformer.training.media import graph_media
from commformer.training.optimisers import NonFiniteError, Optimisers
from commformer.training.ppo import ValueNorm
from commformer.training.resume import carry_files, plan_resume, resumed_wandb_id
from commformer.training.run_folder import RunFolderError, start_run_folder
from commformer.training.signals import catch_stop_signals, restore_signals
from commformer.training.rollout import Collector
from commformer.training.update import ppo_update
from envs.core import STEP_TENSORS, Step
from envs.registry import make_env

log = logging.getLogger("commformer")



# best.pt keeps the checkpoint of the evaluation with the highest of the first of these that the env reports
BEST_KEYS = ("eval/success", "eval/won", "eval/return")


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, overrides: Sequence[str] | None = None) -> None:
        """cfg: a checked Config; with cfg.resume set, the checkpoint's run continues (commformer.training.resume) in
        `run_dir`, the folder this Trainer is given (the command line passes the resumed folder itself). overrides: the
        command line's key=value strings, when there is one (a resume then takes only the keys it sets)."""
        ckpt = None
        if cfg.resume:
            ckpt, cfg = plan_resume(cfg, overrides)
            carry_files(cfg.resume, Path(run_dir))
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.stop_signal: int | None = None
        self.best: dict[str, Any] | None = None  # {"key", "score", "iteration"} of checkpoints/best.pt
        self.saved_iteration: int | None = int(ckpt["iteration"]) if ckpt is not None else None
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        self.env = make_env(cfg.env, cfg.num_envs, self.device)
        self.eval_env = make_env(cfg.env, cfg.eval_env_count, self.device)
        spec = self.env.spec
        self.policy = build_policy(cfg.algo, spec, cfg.seed, self.device)
        a = cfg.algo
        self.opt = Optimisers.build(self.policy, a.group_lrs(), a.upper_lr, a.adam_eps)
        self.vnorm = ValueNorm().to(self.device) if a.value_norm else None
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.collector = Collector(self.env, cfg.rollout_length, self.policy, self.device, self.generator)
        self.iteration, self.env_steps = 0, 0
        self.last_eval: dict[str, float] = {}
        self.last_record: dict[str, Any] | None = None  # the last evaluation's graph-history record
        self.upper_grads: dict[str, Any] | None = None  # logger.alpha_grads: for the next graph-history record
        if ckpt is not None:
            self.restore(ckpt)
        else:
            self.collector.reset(cfg.seed, self.policy)
        try:
            start_run_folder(self.run_dir, to_yaml(cfg))
        except RunFolderError:
            self.close()
            raise
        remove_stale_temps(self.run_dir / "checkpoints")
        for line in cfg.algo.run_notes(cfg):  # legal settings whose effect differs from what they say
            log.warning("%s", line)
        self.logger = Logger(cfg.logger, self.run_dir, OmegaConf.to_container(OmegaConf.structured(cfg)),
                             cfg.iterations * cfg.batch_env_steps, self.run_name, start_env_steps=self.env_steps,
                             resume_iteration=self.iteration if ckpt is not None else None,
                             wandb_id=None if ckpt is None else resumed_wandb_id(ckpt, self.run_dir))
        self.history = GraphHistory(self.run_dir, resume_iteration=self.iteration if ckpt is not None else None)

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
            "policy": self.policy.state_dict(), "carry": self.collector.carry,
            "optimisers": self.opt.state_dict(),
            "value_norm": None if self.vnorm is None else self.vnorm.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "current_step": None if cur is None else {k: getattr(cur, k).cpu() for k in STEP_TENSORS},
            "env": self.env.state_dict() if hasattr(self.env, "state_dict") else None,
            "last_eval": dict(self.last_eval),
            "best": None if self.best is None else dict(self.best),
            "wandb_id": self.logger.wandb_id,
        }
        return state

    def restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.policy.load_state_dict(ckpt["policy"])
            self.opt.load_state_dict(ckpt["optimisers"])
            if self.vnorm is not None:
                self.vnorm.load_state_dict(ckpt["value_norm"])
            self.generator.set_state(ckpt["rng"]["generator"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            self.iteration, self.env_steps = int(ckpt["iteration"]), int(ckpt["env_steps"])
            self.last_eval = {k: float(v) for k, v in (ckpt.get("last_eval") or {}).items()}
            self.best = dict(ckpt["best"]) if ckpt.get("best") else None
            self.policy.restored()
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).splitlines()[0][:200]
            raise CheckpointError(f"checkpoint does not match this run's model/env ({first})") from None
        if ckpt.get("env") is not None and hasattr(self.env, "load_state_dict") and ckpt.get("current_step"):
            self.env.load_state_dict(ckpt["env"])
            cur = {k: v.to(self.device) for k, v in ckpt["current_step"].items()}
            self.collector.current = Step(**cur, episode={})
            self.collector.carry = ckpt.get("carry")
        else:  # the env cannot restore its state: start fresh episodes, seeded by the iteration
            log.warning("env %s cannot save its state: resumed run starts new episodes", self.cfg.env["name"])
            self.collector.reset(self.cfg.seed + RESUME_RESEED_STRIDE * self.iteration, self.policy)

    def save(self) -> Path:
        """Write checkpoints/last.pt; never over a finite checkpoint with non-finite weights (TrainingStopped)."""
        path = self.run_dir / "checkpoints" / "last.pt"
        bad = non_finite(self.policy.state_dict())
        if bad is not None:
            raise TrainingStopped(f"iteration {self.iteration}: {bad} is not finite; {path} was not overwritten "
                                  f"({self.kept_text()})")
        save_checkpoint(path, self.state())
        self.saved_iteration = self.iteration
        return path

    def save_if_best(self) -> Path | None:
        """After an evaluation: write checkpoints/best.pt when this evaluation's score (eval/success, else eval/won,
        else eval/return; ties go to the later one) is the best so far; returns its path when written."""
        key = next((k for k in BEST_KEYS if k in self.last_eval), None)
        if key is None:
            return None
        score = self.last_eval[key]
        if self.best is not None and score < self.best["score"]:
            return None
        self.best = {"key": key, "score": float(score), "iteration": self.iteration}
        path = self.run_dir / "checkpoints" / "best.pt"
        if non_finite(self.policy.state_dict()) is None:
            save_checkpoint(path, self.state())
        return path

    def kept_text(self) -> str:
        """What a stopped run keeps: the iteration of its last checkpoint."""
        if self.saved_iteration is None:
            return "no checkpoint had been written yet"
        return f"checkpoints/last.pt of iteration {self.saved_iteration} is kept"

    # ---- loop -------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.policy.eval()
        how = self.policy.acting(self.policy.phase(max(self.iteration - 1, 0), self.cfg.iterations), True)
        seed = self.cfg.seed + EVAL_SEED_OFFSET
        out, details = evaluate_with_details(self.policy, self.eval_env, seed, self.device, how,
                                             episodes=self.cfg.eval_episode_count)
        if self.cfg.eval_sampled:  # the same episodes with sampled actions (argmax can stall where sampling wins)
            sampled = evaluate_with_details(self.policy, self.eval_env, seed, self.device, how,
                                            episodes=self.cfg.eval_episode_count, sample_actions=True)[0]
            out.update({f"eval_sampled/{k.split('/', 1)[1]}": v for k, v in sampled.items() if k.startswith("eval/")})
        self.policy.train()
        # every evaluation leaves a record in graph_history.jsonl (commformer/training/graph_history.py)
        self.last_record = graph_record(self.policy.comm_graph, details, out, self.iteration, self.env_steps, how)
        if self.upper_grads is not None:
            self.last_record["alpha_grad"] = self.upper_grads
            self.upper_grads = None
        self.history.append(self.last_record)
        return out

    def eval_media(self) -> dict[str, Any] | None:
        """The dashboard images of the last evaluation (alpha or the acting graph, gate-open rates), when the logger
        records images."""
        rec = self.last_record
        if rec is None or rec["graph"] is None or not self.logger.wants_media:
            return None
        scores = rec["alpha"] if rec["alpha"] is not None else rec["graph"]
        rates = None if rec["gate_open"] is None else [float("nan") if r is None else r for r in rec["gate_open"]]
        return graph_media(scores, rec["graph"], rates,
                           title="alpha" if rec["alpha"] is not None else f"graph ({rec['mode']})")

    def schedule(self) -> AlgoConfig:
        """The algo settings of this iteration: with algo.lr_decay the network's and gate's learning rates fall
        linearly from their values to 0 (set on the optimiser here); with algo.entropy_coef_final the entropy weight
        moves linearly to it. Progress = iterations done / iterations of the run."""
        a = self.cfg.algo
        progress = self.iteration / max(self.cfg.iterations, 1)
        if a.lr_decay:
            for group in self.opt.network.param_groups:
                group["lr"] = group["initial_lr"] * (1.0 - progress)
        if a.entropy_coef_final is None:
            return a
        return replace(a, entropy_coef=a.entropy_coef + (a.entropy_coef_final - a.entropy_coef) * progress)

    def iterate(self) -> dict[str, Any]:
        """One iteration: rollout, update, and the row of metrics for it."""
        cfg = self.cfg
        ph = self.policy.phase(self.iteration, cfg.iterations)
        denorm = self.vnorm.denormalize if self.vnorm is not None else (lambda x: x)
        t0 = time.perf_counter()
        ro = self.collector.collect(self.policy, self.policy.acting(ph, False), denorm)
        t1 = time.perf_counter()
        if cfg.algo.reward_scale != 1.0:
            ro.rewards.mul_(cfg.algo.reward_scale)
        algo = self.schedule()
        try:
            grads = {} if cfg.logger.alpha_grads and (self.iteration + 1) % cfg.eval_every == 0 else None
            stats = ppo_update(self.policy, ro, self.opt, self.vnorm, algo, cfg.ppo_epochs, ph, grads)
            if grads:  # recorded with the evaluation that follows this iteration
                self.upper_grads = {k: v[0].cpu().tolist() for k, v in grads.items()}
        except NonFiniteError as e:
            raise TrainingStopped(f"iteration {self.iteration + 1}: {e}; training stopped before that step "
                                  f"({self.kept_text()}; lower algo.lr / algo.graph_lr or check the env's rewards)"
                                  ) from None
        bad = non_finite(self.policy.state_dict())
        if bad is not None:
            raise TrainingStopped(f"iteration {self.iteration + 1}: parameter {bad} is not finite after the update; "
                                  f"training stopped ({self.kept_text()}; lower algo.lr / algo.graph_lr)")
        self.policy.after_update(ro.obs, ro.alive)
        t2 = time.perf_counter()
        self.iteration += 1
        self.env_steps += cfg.batch_env_steps
        row: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.env_steps}
        episodes = self.collector.pop_finished()
        row["train/episodes"] = int(episodes["return"].numel()) if episodes else 0
        for k in ("return", "length") + tuple(self.env.spec.task_metrics):
            row[f"train/{k}"] = float(episodes[k].mean()) if k in episodes else float("nan")
        row["comm/messages_per_step"] = float(self.policy.messages(ro.stored, ro.alive).mean())
        row.update(self.policy.rollout_metrics(ro.stored, ro.alive))
        row.update(self.policy.iteration_metrics())
        row.update(stats)
        if cfg.algo.lr_decay:
            row["train/lr"] = self.opt.network.param_groups[0]["lr"]
        if cfg.algo.entropy_coef_final is not None:
            row["train/entropy_coef"] = algo.entropy_coef
        row["perf/rollout_s"] = t1 - t0
        row["perf/update_s"] = t2 - t1
        row["perf/env_steps_per_s"] = cfg.batch_env_steps / (t2 - t0)
        row["perf/rollout_env_steps_per_s"] = cfg.batch_env_steps / (t1 - t0)
        return row

    def train(self, at_end: Optional[Callable[["Trainer"], None]] = None) -> dict[str, float]:
        """Run until the budget is spent; returns the final evaluation. at_end(trainer): called after the last
        iteration, before the logger closes (the command line records the final video there). SIGINT / SIGTERM end
        the run after the current iteration with a checkpoint (TrainingStopped, exit status 128 + the signal); a
        second SIGINT stops at once."""
        cfg = self.cfg
        previous = catch_stop_signals(self.on_signal)
        try:
            if cfg.eval_at_start and self.iteration == 0:
                self.last_eval = self.evaluate()
                self.logger.log({"iteration": 0, "env_steps": 0, **self.last_eval}, media=self.eval_media())
            if self.iteration >= cfg.iterations and not self.last_eval:  # a finished run from an older checkpoint
                self.last_eval = self.evaluate()
            while self.iteration < cfg.iterations:
                row = self.iterate()
                last = self.iteration >= cfg.iterations
                if self.iteration % cfg.eval_every == 0 or last:
                    self.last_eval = self.evaluate()
                    row.update(self.last_eval)
                    self.save_if_best()
                    self.logger.log(row, media=self.eval_media())
                else:
                    self.logger.log(row)
                if self.iteration % cfg.checkpoint_every == 0 or last or self.stop_signal is not None:
                    self.save()
                if self.stop_signal is not None and not last:
                    name = signal.Signals(self.stop_signal).name
                    raise TrainingStopped(f"stopped by {name} after iteration {self.iteration}: checkpoint written to "
                                          f"{self.run_dir / 'checkpoints' / 'last.pt'}; continue with "
                                          f"resume={self.run_dir}", exit_code=128 + self.stop_signal)
            if at_end is not None:
                at_end(self)
            self.logger.summary(self.summary_lines())
        finally:
            restore_signals(previous)
            self.logger.close()
            self.close()
        return self.last_eval

    def on_signal(self, signum: int) -> None:
        """SIGINT / SIGTERM: stop after this iteration with a checkpoint; a second SIGINT stops at once."""
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        log.warning("%s received: stopping after this iteration with a checkpoint (Ctrl-C again to stop now)",
                    signal.Signals(signum).name)

    def summary_lines(self) -> list[str]:
        lines = [f"run folder: {self.run_dir}", f"env steps: {self.env_steps}  iterations: {self.iteration}"]
        lines += [f"final {k}: {v:.4g}" for k, v in self.last_eval.items()]
        lines += self.policy.summary_lines(self.iteration)
        lines.append(f"checkpoint: {self.run_dir / 'checkpoints' / 'last.pt'}")
        if self.best is not None:
            lines.append(f"best checkpoint: {self.run_dir / 'checkpoints' / 'best.pt'} ({self.best['key']} "
                         f"{self.best['score']:.4g} at iteration {self.best['iteration']})")
        return lines

    def close(self) -> None:
        for env in (self.env, self.eval_env):
            close = getattr(env, "close", None)
            if close is not None:
                close()

