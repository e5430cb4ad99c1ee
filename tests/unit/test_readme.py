"""The README's promises that can be checked mechanically."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from kunpay_worker.settings import Settings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def env_names(model: type[BaseModel], prefix: str = "KUNPAY_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = prefix + name.upper()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += env_names(annotation, env + "__")
        else:
            names.append(env)
    return names


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in env_names(Settings) if f"| `{name}` |" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_the_first_lines_are_the_two_commands() -> None:
    head = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
