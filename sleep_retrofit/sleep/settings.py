"""The sleep settings a user chooses: passes N, window L, eviction mode, loop span."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..checks import is_int

EVICTION_MODES = ("hard", "sliding")


@dataclass(frozen=True)
class SleepSettings:
    """How a model consumes long context.

    passes: N, the number of recurrent passes that consolidate a chunk before its KV cache is
        evicted. N=1 is the plain hybrid (no sleep).
    window: L, the chunk length; also the attention window in "sliding" mode.
    eviction: "hard" clears the KV cache every L tokens; "sliding" keeps the last L-1 tokens.
    loop_span: (start, end) base decoder-layer indices of the loop body, end exclusive; None
        takes the family's default (design.md).
    tolerance: adaptive sleep. 0 (the default) runs all N passes on every chunk; t > 0 stops
        consolidating a chunk after the first pass k >= 2 whose relative change of the
        fast-weight state, |S_k - S_(k-1)| / |S_k| (every row of the batch), is below t; N stays
        the cap (docs/sessions.md).
    """

    passes: int = 1
    window: int = 2048
    eviction: str = "hard"
    loop_span: tuple[int, int] | None = None
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not is_int(self.passes) or self.passes < 1:
            raise ValueError(f"passes (N) must be an integer >= 1, got {self.passes!r}")
        if not is_int(self.window) or self.window < 1:
            raise ValueError(f"window (L) must be an integer >= 1, got {self.window!r}")
        if (
            isinstance(self.tolerance, bool)
            or not isinstance(self.tolerance, (int, float))
            or not (0 <= self.tolerance < float("inf"))
        ):
            raise ValueError(f"tolerance must be a number >= 0 (0 = always N passes), got {self.tolerance!r}")
        if self.eviction not in EVICTION_MODES:
            raise ValueError(f"eviction must be one of {', '.join(EVICTION_MODES)}; got {self.eviction!r}")
        if self.loop_span is not None:
            span = tuple(self.loop_span)
            if len(span) != 2 or not all(isinstance(i, int) for i in span) or not 0 <= span[0] < span[1]:
                raise ValueError(
                    f"loop_span must be (start, end) with 0 <= start < end, got {self.loop_span!r}"
                )
            object.__setattr__(self, "loop_span", span)

    def replace(self, **changes) -> SleepSettings:
        """A copy with some settings changed (None values are ignored)."""
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        return SleepSettings(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["loop_span"] = list(self.loop_span) if self.loop_span is not None else None
        return values
