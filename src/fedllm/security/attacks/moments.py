"""The colluders' mean and standard deviation per coordinate, what ALIE, IPM, min-max
and min-sum craft from. Row by row in float64: torch's reductions across rows
(``std(dim=0)``) were some ten times slower on these machines (2 s for 3 x 10M)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when an update is crafted
    import torch


def row_mean(rows: torch.Tensor) -> torch.Tensor:
    """Each coordinate's mean over the rows (float64), one row at a time."""
    import torch

    mean = rows[0].to(torch.float64, copy=True)
    for row in rows[1:]:
        mean.add_(row)
    return mean.div_(rows.shape[0])


def mean_and_std(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each coordinate's mean and sample standard deviation (``n - 1``) over the rows
    (float64; the standard deviation is 0 for one row)."""
    import torch

    mean = row_mean(rows)
    spread = torch.zeros_like(mean)
    for row in rows:
        spread.add_((row.double() - mean).square_())
    if rows.shape[0] > 1:
        spread.div_(rows.shape[0] - 1)
    return mean, spread.sqrt_()
