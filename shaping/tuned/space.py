"""The search space of tuned_static: the controlled tenants' actions as CatCMAwM's integer and categorical variables.

The controlled tenants' flat actions (shaping.spec.ActionLayout: per class DSCP, rate, ceil, priority, drop,
path, then the root rate) are concatenated in scenario order into one joint action. Ordered choices with
three or more options (rate, ceil, priority, drop and root levels) are integer variables of the Gaussian
part of CatCMAwM; the DSCP mark and the path are categorical (a DSCP picks one of the provider's queues and
a path one link: neither has an order a Gaussian step could follow), and so is any choice of two options
(cmaes advises that for binary variables). A choice with a single option is fixed at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from cmaes import CatCMAwM

from shaping.spec import ACTION_FIELDS, ActionLayout

#: Fields searched as categorical variables, whatever their number of options.
CATEGORICAL_FIELDS = ("dscp", "path")
#: Initial standard deviation of an integer variable, as a fraction of its range of indices.
INIT_STD_FRACTION = 0.25
#: Initial probability of the starting plan's option of a categorical variable (the rest shared evenly).
INIT_CATEGORY_MASS = 0.5


@dataclass(frozen=True)
class SearchSpace:
    """The joint action of the controlled tenants and its encoding for CatCMAwM."""

    layouts: tuple[ActionLayout, ...]
    """Action layouts of the controlled tenants, in scenario order."""

    @cached_property
    def nvec(self) -> np.ndarray:
        """Options of each dimension of the joint action."""
        return np.concatenate([lay.nvec for lay in self.layouts])

    @cached_property
    def _field_names(self) -> list[str]:
        names: list[str] = []
        for lay in self.layouts:
            names += list(ACTION_FIELDS) * len(lay.spec.classes) + ["root"]
        return names

    @cached_property
    def integer_dims(self) -> np.ndarray:
        """Indices of the joint action searched as integer variables."""
        return np.array(
            [i for i, (f, n) in enumerate(zip(self._field_names, self.nvec, strict=True))
             if n >= 3 and f not in CATEGORICAL_FIELDS],
            dtype=np.int64,
        )  # fmt: skip

    @cached_property
    def categorical_dims(self) -> np.ndarray:
        """Indices of the joint action searched as categorical variables."""
        ints = set(self.integer_dims.tolist())
        return np.array([i for i, n in enumerate(self.nvec) if n >= 2 and i not in ints], dtype=np.int64)

    @property
    def searchable(self) -> bool:
        """Whether any dimension has more than one option."""
        return bool((self.nvec > 1).any())

    def split(self, joint: np.ndarray) -> list[np.ndarray]:
        """The joint action cut into the tenants' flat actions."""
        bounds = np.cumsum([len(lay.nvec) for lay in self.layouts])[:-1]
        return [a.astype(np.int64) for a in np.split(np.asarray(joint), bounds)]

    def join(self, actions: Sequence[np.ndarray]) -> np.ndarray:
        """The tenants' flat actions as one joint action."""
        return np.concatenate([np.asarray(a, dtype=np.int64) for a in actions])

    def neighbours(self, joint: np.ndarray) -> np.ndarray:
        """(M, D) every joint action that differs from joint in exactly one choice, dimension by dimension."""
        out = []
        for d, n in enumerate(self.nvec):
            for v in range(int(n)):
                if v != joint[d]:
                    move = joint.copy()
                    move[d] = v
                    out.append(move)
        return np.array(out, dtype=np.int64).reshape(-1, len(self.nvec))

    def decode(self, solution: CatCMAwM.Solution) -> np.ndarray:
        """The joint action of a CatCMAwM solution (fixed dimensions at their only option)."""
        joint = np.zeros(len(self.nvec), dtype=np.int64)
        if len(self.integer_dims):
            assert solution.z is not None
            joint[self.integer_dims] = np.rint(solution.z).astype(np.int64)
        if len(self.categorical_dims):
            assert solution.c is not None
            joint[self.categorical_dims] = np.argmax(solution.c, axis=1)
        return joint

    def optimizer(self, start: np.ndarray, population: int, seed: int) -> CatCMAwM:
        """A CatCMAwM centred on a joint action: integer variables with their mean at the start and a standard
        deviation of INIT_STD_FRACTION of their range, categorical ones with INIT_CATEGORY_MASS on the start's
        option.

        Raises:
            ValueError: the space has no dimension with more than one option.
        """
        if not self.searchable:
            raise ValueError("every dimension of the joint action has a single option: nothing to search")
        ints, cats = self.integer_dims, self.categorical_dims
        z_space = [list(range(int(n))) for n in self.nvec[ints]] or None
        mean = cov = None
        if len(ints):
            mean = start[ints].astype(np.float64)
            cov = np.diag((INIT_STD_FRACTION * (self.nvec[ints] - 1).astype(np.float64)) ** 2)
        c_space = [int(n) for n in self.nvec[cats]] or None
        cat_param = None
        if len(cats):
            k_max = int(self.nvec[cats].max())
            cat_param = np.zeros((len(cats), k_max))
            for row, (n, choice) in enumerate(zip(self.nvec[cats], start[cats], strict=True)):
                mass = max(INIT_CATEGORY_MASS, 1.0 / n)
                cat_param[row, :n] = (1.0 - mass) / (n - 1)
                cat_param[row, choice] = mass
        return CatCMAwM(
            z_space=z_space, c_space=c_space, population_size=population, mean=mean, sigma=1.0, cov=cov,
            cat_param=cat_param, seed=seed,
        )  # fmt: skip
