"""The benchmark's prompt classes (bench/pearl_bench/prompts.py): the committed mixed set has at least 8 of
each class, and the opt-in long class is made of HumanEval problems the humaneval class does not use."""
import pytest

from pearl_bench.prompts import CLASSES, LONG, LONG_FIRST_PROBLEM, humaneval, mixed


def test_every_default_class_has_at_least_eight_prompts():
    prompts = mixed(8)
    for category in CLASSES:
        assert len([p for p in prompts if p.category == category]) == 8, category
    assert len({p.prompt_id for p in prompts}) == len(prompts)


def test_the_long_class_is_opt_in_and_made_of_problems_humaneval_never_reaches():
    assert LONG not in {p.category for p in mixed(2)}
    long = mixed(3, ("chat", LONG))
    assert [p.category for p in long] == ["chat"] * 3 + [LONG] * 3
    problems = [p.text for p in humaneval()]
    for prompt in long[3:]:
        assert prompt.chat and len(prompt.text) > 1500  # hundreds of tokens at least
        used = [i for i, text in enumerate(problems) if text in prompt.text]
        assert len(used) == 6 and min(used) >= LONG_FIRST_PROBLEM
    assert long[3].text != long[4].text


def test_an_unknown_class_is_refused():
    with pytest.raises(ValueError, match="known: humaneval"):
        mixed(1, ("chat", "poetry"))
