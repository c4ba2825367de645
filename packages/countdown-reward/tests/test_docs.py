"""The examples users copy are run: every module's docstring examples and the README's."""

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

import countdown_reward

README = Path(__file__).resolve().parents[1] / "README.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PUBLIC_CALLABLES = [
    name
    for name in countdown_reward.__all__
    if inspect.isfunction(getattr(countdown_reward, name)) or name == "CountdownReward"
]


def _run(test: doctest.DocTest) -> doctest.TestResults:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", ["countdown_reward.scoring", "countdown_reward.verifier"])
def test_docstring_examples_run(name: str) -> None:
    tests = doctest.DocTestFinder().find(importlib.import_module(name), name)
    results = [_run(t) for t in tests]
    assert sum(r.attempted for r in results) > 0
    assert sum(r.failed for r in results) == 0


@pytest.mark.parametrize("name", PUBLIC_CALLABLES)
def test_every_public_function_has_an_example(name: str) -> None:
    tests = doctest.DocTestFinder().find(getattr(countdown_reward, name), name)
    assert any(t.examples for t in tests), f"{name} has no runnable example in its docstring"


def test_readme_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    text = "\n".join(b for b in blocks if b.lstrip().startswith(">>>"))
    test = doctest.DocTestParser().get_doctest(text, {}, "README.md", str(README), 0)
    assert len(test.examples) >= 10
    assert _run(test).failed == 0
