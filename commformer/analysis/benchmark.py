"""Throughput benchmarks: env-only (random available actions), end-to-end training (rollout / update split), and a
same-run comparison of two revisions.

`python scripts/benchmark.py [--suite env|train|all] [--quick] [--out table.md]` prints markdown tables of absolute
numbers: env steps (or agent-steps) per second with torch pinned to --threads threads (default 1); they depend on
the load the machine is under.
`python scripts/benchmark.py --compare REV [--pairs 3] [--preset authors_pp|smax_3m|default] [--overrides "k=v ..."]`
runs this checkout's and REV's own scripts/train.py interleaved and reports speedups (commformer/analysis/compare.py),
which hold up under shared load where absolute numbers do not.
`python scripts/benchmark.py --methods mappo,ippo,... [--pairs 3] [--overrides "env=pp_medium ..."]` runs each method
once per round, interleaved, and reports env steps per CPU second of each and its ratio to the first method.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from commformer.analysis.compare import PRESETS, compare_main
from commformer.analysis.methods_bench import methods_main
from commformer.analysis.tables import md_table
from commformer.cli_args import OneLineParser, positive_int
from commformer.errors import guarded
from commformer.log_setup import script_logging
from envs.core import random_available
from envs.registry import family_unavailable, make_env

CONF = Path(__file__).resolve().parents[2] / "conf"


def env_config(name: str, **over: Any) -> dict[str, Any]:
    cfg = yaml.safe_load((CONF / "env" / f"{name}.yaml").read_text())
    cfg.update(over)
    return cfg


def env_throughput(cfg: dict[str, Any], num_envs: int, steps: int, device: str = "cpu") -> dict[str, float]:
    """Env-only speed with random available actions (action sampling included in the timing)."""
    env = make_env(cfg, num_envs, device)
    try:
        g = torch.Generator(env.device).manual_seed(0)
        step = env.reset(seed=0)
        for _ in range(3):  # warm up (compilation, worker start)
            step = env.step(random_available(step.avail_actions, g))
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step = env.step(random_available(step.avail_actions, g))
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = env.spec.n_agents
    finally:
        env.close()
    return {"env_steps_per_s": num_envs * steps / dt, "agent_steps_per_s": num_envs * steps * n / dt}


def train_throughput(overrides: list[str], iterations: int) -> dict[str, float]:
    """End-to-end training speed of the config composed from conf/ with `overrides` (after one warm-up iteration)."""
    from hydra import compose, initialize_config_dir

    from commformer.hydra_glue import load_config
    from commformer.training.trainer import Trainer

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides + ["logger=quiet"])
    config = load_config(cfg)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        try:
            trainer.iterate()
            rollout = update = 0.0
            for _ in range(iterations):
                row = trainer.iterate()
                rollout += row["perf/rollout_s"]
                update += row["perf/update_s"]
        finally:
            trainer.logger.close()
            trainer.close()
    steps = config.batch_env_steps * iterations
    return {"env_steps_per_s": steps / (rollout + update), "rollout_env_steps_per_s": steps / rollout,
            "update_s_per_iter": update / iterations, "rollout_s_per_iter": rollout / iterations}


ENV_ROWS = [  # (label, config name, overrides, B values)
    ("Predator-Prey 5x5, 3 predators", "pp", {}, (1, 64, 1024, 4096)),
    ("Predator-Prey 10x10, 5 predators", "pp_medium", {}, (64, 1024, 4096)),
    ("Predator-Capture-Prey 5x5", "pcp", {}, (64, 1024, 4096)),
    ("MPE simple_spread, in-process", "mpe_simple_spread", {"workers": 0}, (16, 64)),
    ("MPE simple_spread, 2 workers", "mpe_simple_spread", {"workers": 2}, (16, 64)),
    ("SMAX 3m (jax, CPU)", "smax_3m", {}, (32, 128)),
]

RELEASED_PP = ["ppo_epochs=10", "algo.clip=0.05", "algo.hidden=64", "algo.layers=1", "algo.heads=1"]
TRAIN_ROWS = [  # (label, overrides)
    ("default run (pp, B=32, T=40, 10 epochs)", []),
    ("released PP settings (B=8, T=200, 10 epochs, clip 0.05)", ["num_envs=8", "rollout_length=200"] + RELEASED_PP),
    ("rollout-heavy (B=256, T=20)", ["num_envs=256", "rollout_length=20"]),
    ("pcp (B=32, T=40)", ["env=pcp"]),
    ("mpe_simple_spread (B=32, T=40, 2 workers)", ["env=mpe_simple_spread"]),
    ("smax_3m (B=32, T=40)", ["env=smax_3m", "num_envs=32", "rollout_length=40", "algo.minibatches=1"]),
] + [  # the baselines on the default run's batch (docs/methods/), the recurrent baselines on smax_3m below
    (f"{name} (pp, B=32, T=40, 10 epochs)", [f"algo={name}"])
    for name in ("mappo", "ippo", "commnet", "ic3net", "tarmac", "gacomm", "magic")
] + [  # the recurrent baselines on smax_3m, beside commformer's smax_3m row
    (f"{name}, smax_3m (B=32, T=40)", [f"algo={name}", "env=smax_3m", "num_envs=32", "rollout_length=40",
                                       "algo.minibatches=1"])
    for name in ("mappo", "ippo", "commnet")
]


def family_available(name: str) -> bool:
    """False for families whose requirements are missing here (their rows are left out)."""
    return family_unavailable(env_config(name)["family"]) is None


def run_env_suite(quick: bool, device: str) -> str:
    rows = []
    for label, name, over, sizes in ENV_ROWS:
        if not family_available(name):
            continue
        for b in sizes:
            steps = 50 if quick else max(200, min(5000, 400_000 // b))
            r = env_throughput(env_config(name, **over), b, steps, device)
            rows.append([label, str(b), f"{r['env_steps_per_s']:,.0f}", f"{r['agent_steps_per_s']:,.0f}"])
    return md_table(["env", "B", "env-steps/s", "agent-steps/s"], rows)


def run_train_suite(quick: bool, device: str) -> str:
    rows = []
    for label, over in TRAIN_ROWS:
        env_name = next((o.split("=", 1)[1] for o in over if o.startswith("env=")), "pp")
        if not family_available(env_name):
            continue
        r = train_throughput(over + [f"device={device}"], 1 if quick else 3)
        rows.append([label, f"{r['env_steps_per_s']:,.0f}", f"{r['rollout_env_steps_per_s']:,.0f}",
                     f"{r['rollout_s_per_iter']:.3f}", f"{r['update_s_per_iter']:.3f}"])
    return md_table(["training config", "env-steps/s (end to end)", "rollout env-steps/s", "rollout s/iter",
                     "update s/iter"], rows)


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("env", "train", "all"), default="all")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="few steps (a smoke check, not a measurement)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    g = p.add_argument_group("comparison of two revisions (--compare)")
    g.add_argument("--compare", metavar="REV", default=None,
                   help="a git revision (or another checkout's folder) to compare this checkout with")
    g.add_argument("--pairs", type=positive_int, default=3, help="interleaved A B pairs (default 3)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named overrides: " + "; ".join(f"{k}: {' '.join(v) or '(none)'}" for k, v in PRESETS.items()))
    g.add_argument("--overrides", default="", help='extra Hydra overrides for both sides, e.g. "total_env_steps=16000"')
    g.add_argument("--a-overrides", default="", help="extra overrides for side A (this checkout) only")
    g.add_argument("--b-overrides", default="", help="extra overrides for side B only (to compare two settings)")
    g.add_argument("--no-warmup", action="store_true", help="skip the short untimed run of each side first")
    m = p.add_argument_group("several methods on one task (--methods; --pairs is then the number of rounds, "
                             "--preset and --overrides apply to every method)")
    m.add_argument("--methods", metavar="ALGO,ALGO,...", default=None,
                   help="algo presets to run interleaved, each once per round (ratios to the first)")
    args = guarded(lambda: p.parse_args(argv))
    if args.methods is not None and args.compare is not None:
        guarded(lambda: p.error("--methods and --compare: give one of them"))
    if args.methods is not None:
        script_logging()
        text = guarded(lambda: methods_main([x for x in args.methods.split(",") if x], args.pairs, args.preset,
                                            args.overrides.split(), args.out, warmup=not args.no_warmup))
        sys.stdout.write(text)
        return
    if args.compare is not None:
        script_logging()
        text = guarded(lambda: compare_main(args.compare, args.pairs, args.preset, args.overrides.split(),
                                            args.b_overrides.split(), args.out, warmup=not args.no_warmup,
                                            a_overrides=args.a_overrides.split()))
        sys.stdout.write(text)
        return
    torch.set_num_threads(args.threads)
    parts = [f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, "
             f"{os.cpu_count()} CPUs"]
    if args.suite in ("env", "all"):
        parts.append(run_env_suite(args.quick, args.device))
    if args.suite in ("train", "all"):
        parts.append(run_train_suite(args.quick, args.device))
    text = "\n\n".join(parts) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
