"""The short run of every fuzz target (`make fuzz` is the long one): each seed-corpus file
replayed, then a fixed sequence of hypothesis inputs (derandomized: the same on every run),
half of them seeds edited at random places, half raw bytes. About 9 s in all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = dict.fromkeys(TARGETS, 1000)


def seeds(name: str) -> list[Path]:
    return sorted((CORPUS / name).iterdir())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_has_seeds(name: str) -> None:
    assert len(seeds(name)) >= 5


@pytest.mark.parametrize(
    "seed", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for n in TARGETS for p in seeds(n)]
)
def test_seed_corpus_passes(seed: Path) -> None:
    TARGETS[seed.parent.name](seed.read_bytes())


@st.composite
def edited(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with a few bytes replaced, inserted or cut out, at places drawn anywhere in it."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        stuff = draw(st.binary(max_size=4))
        cut = draw(st.integers(0, 4))
        data[at : at + cut] = stuff
    return bytes(data)


def _short_run(name: str) -> Callable[[], None]:
    corpus = [p.read_bytes() for p in seeds(name)]
    inputs = st.one_of(edited(corpus), st.binary(max_size=256))
    settings = hypothesis.settings(
        derandomize=True,
        max_examples=EXAMPLES[name],
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    return settings(hypothesis.given(inputs)(TARGETS[name]))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_run(name: str) -> None:
    _short_run(name)()
