"""SMACv2 games and the worker processes that own them (envs.workers protocol): the game factory (smacv2 is
imported only here, inside the worker, when a game is built), the reseeding of smacv2's capability distributions, and
a worker's group of games stepped one after the other."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from envs.core import EnvUnavailableError
from envs.smacv2_convert import GameBatch, game_view, stack_games
from envs.smacv2_install import INSTALL_SCRIPT
from envs.workers import exit_on_sigterm, serve, unavailable_or_error


def reseed_generators(obj: Any, seed: int, _found: list | None = None) -> int:
    """Give every numpy Generator held by `obj` (a smacv2 distribution) or by the distributions it holds a fresh
    generator seeded with [seed, k] (k = 0, 1, ... in attribute order). Returns how many were reseeded."""
    found = [] if _found is None else _found
    for name, value in list(vars(obj).items()):
        if isinstance(value, np.random.Generator):
            setattr(obj, name, np.random.default_rng([seed, len(found)]))
            found.append(name)
        elif hasattr(value, "generate") and hasattr(value, "__dict__"):
            reseed_generators(value, seed, found)
    return len(found)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


@dataclass(frozen=True)
class SMACv2GameFactory:
    """Builds one smacv2 game (StarCraft II launches at its first reset) from StarCraft2Env keyword arguments."""

    game_kwargs: dict

    def __call__(self, seed: int | None) -> Any:
        try:
            from smacv2.env import StarCraft2Env
            from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper
        except TypeError as e:  # protobuf >= 3.21 cannot load pysc2's generated files
            raise EnvUnavailableError(
                f"smacv2 failed to import (TypeError: {first_line(e)}); export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="
                f"python, or use a virtualenv with protobuf < 3.21 made by {INSTALL_SCRIPT}") from None
        except ImportError as e:
            raise EnvUnavailableError(
                f"smacv2 failed to import ({type(e).__name__}: {first_line(e)}); pip install the [smacv2] setup: "
                f"see {INSTALL_SCRIPT}") from None
        kwargs = {**copy.deepcopy(self.game_kwargs), "seed": seed}
        if "capability_config" not in kwargs:
            return StarCraft2Env(**kwargs)
        game = StarCraftCapabilityEnvWrapper(**kwargs)
        if seed is not None:
            for dist in game.env_key_to_distribution_map.values():
                reseed_generators(dist, seed)
        return game


class GameGroup:
    """The games of one worker, built by `factory(seed)`: reset / step them in turn and return numpy results."""

    def __init__(self, factory: Callable[[int | None], Any], n_games: int) -> None:
        self.factory = factory
        self.games = [factory(None) for _ in range(n_games)]

    def env_info(self) -> dict:
        return dict(self.games[0].get_env_info())

    def reset(self, seeds: Sequence[int] | None) -> GameBatch:
        """Start new episodes; with seeds (one per game) first rebuild every game with its seed."""
        if seeds is not None:
            random.seed(int(seeds[0]))  # this worker's own process: smacv2 shuffles teams with `random`
            self.close()
            self.games = [self.factory(int(s)) for s in seeds]
        views = []
        for game in self.games:
            game.reset()
            views.append(game_view(game))
        return stack_games(views)

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        """actions [G,N] int64 -> {"final": GameBatch after the step, "reward" [G] f32, "finished" [G] bool,
        "infos": G dicts, "fresh": GameBatch of the finished games after their reset (or None)}."""
        finals, rewards, finished, infos, fresh = [], [], [], [], []
        for game, act in zip(self.games, actions):
            reward, done, info = game.step(act.tolist())
            finals.append(game_view(game))
            rewards.append(float(reward))
            finished.append(bool(done))
            infos.append(dict(info))
            if done:
                game.reset()
                fresh.append(game_view(game))
        return {"final": stack_games(finals), "reward": np.asarray(rewards, dtype=np.float32),
                "finished": np.asarray(finished, dtype=bool), "infos": infos,
                "fresh": stack_games(fresh) if fresh else None}

    def handle(self, cmd: str, arg: Any) -> Any:
        """A worker command: ("reset", seeds or None) -> reset(); ("step", actions [G,N]) -> step()."""
        return self.reset(arg) if cmd == "reset" else self.step(arg)

    def close(self) -> None:
        for game in self.games:
            game.close()


def worker_main(conn: Any, factory: Callable[[int | None], Any], n_games: int) -> None:
    """Worker loop (envs.workers.serve): build a GameGroup, answer ("ok", env_info); then ("reset", seeds) /
    ("step", actions) / ("close", None) with ("ok", result), ("error", text) or, when the game cannot start,
    ("unavailable", one line). SIGTERM (what multiprocessing sends daemonic workers at exit) also closes the games,
    so no StarCraft II process outlives its worker."""
    exit_on_sigterm()
    serve(conn, lambda: GameGroup(factory, n_games), hello=GameGroup.env_info, reply_to_error=unavailable_or_error)
