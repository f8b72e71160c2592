"""Story: an option's default is declared once, in the schema. Trainer code reads the typed config (`cfg.x`, or
`option(cfg, "x")` for an option only some training types have), so no call site can run a default that
disagrees with the one the user sees in the page and the docs (issue 19: max_grad_norm 0 vs 1.0, compile
"off" vs "auto", cache_latents False vs True …)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainer.config import CONFIG_TYPES, config_for, option, schema_default
from trainer.config.rules import validate_values

TRAINER = Path(__file__).resolve().parents[1] / "trainer"
OPTIONS = {name for cls in CONFIG_TYPES.values() for name in cls.model_fields}
# getattr(<receiver>, "<schema option name>", default) on objects that are not configs, which happen to share a name
# (accelerate's wrapped optimizer and Accelerator; a transformers model's config)
NOT_CONFIGS = {"optimizer", "ctx.optimizer", "ctx.accelerator", "module.config"}


def call_site_defaults(source: str, filename: str) -> list[str]:
    """file:line of every `getattr(x, "<option>", default)`, `cfg_get(…)` and `getattr(x, <name>, default)`
    (a computed name may be an option: `for k in ("rank_dropout", …): getattr(c, k, 0)`)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        where = f"{filename}:{node.lineno}: {ast.unparse(node)}"
        if node.func.id == "cfg_get":
            found.append(where)
        elif node.func.id == "getattr" and len(node.args) == 3:
            name, receiver = node.args[1], ast.unparse(node.args[0])
            if not isinstance(name, ast.Constant):
                found.append(where)
            elif name.value in OPTIONS and receiver not in NOT_CONFIGS:
                found.append(where)
    return found


def test_no_trainer_code_declares_a_default_of_its_own_for_an_option():
    sites = []
    for path in sorted(TRAINER.rglob("*.py")):
        sites += call_site_defaults(path.read_text(encoding="utf-8"), str(path.relative_to(TRAINER.parent)))
    assert not sites, ("read these from the typed config (cfg.x, or trainer.config.option(cfg, 'x') for an option "
                       "some training types lack); the default lives in the schema:\n" + "\n".join(sites))


@pytest.mark.parametrize("line, named", [
    ('n = getattr(cfg, "max_grad_norm", 0)', "getattr(cfg, 'max_grad_norm', 0)"),
    ('n = getattr(self.config, "compile", "off") or "off"', "getattr(self.config, 'compile', 'off')"),
    ('n = cfg_get(cfg, "cache_latents", False)', "cfg_get(cfg, 'cache_latents', False)"),
    ('d = any(getattr(c, k, 0) for k in ("rank_dropout", "module_dropout"))', "getattr(c, k, 0)"),
])
def test_the_lint_names_a_reintroduced_default(line, named):
    assert call_site_defaults("x = 1\n" + line, "trainer/x.py") == [f"trainer/x.py:2: {named}"]


def test_the_lint_lets_non_config_objects_and_typed_reads_pass():
    ok = ("inner = getattr(optimizer, 'optimizer', optimizer)\nn = cfg.max_grad_norm\n"
          "f = getattr(base, 'family', None)\nv = getattr(config, fam.config_flag)\nm = option(cfg, 'module_dropout')")
    assert call_site_defaults(ok, "trainer/x.py") == []


FAMILIES = {"sd1": {}, "sd2": {"v2": True}, "sdxl": {"sdxl": True, "resolution": "1024,1024"},
            "flux": {"flux1_checkbox": True, "resolution": "1024,1024"},
            "sd3": {"sd3_checkbox": True, "resolution": "1024,1024"}}


# what a user must type before a run can start (every other option has a default)
REQUIRED = {"textual_inversion": {"token_string": "mychar"}}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("training_type", CONFIG_TYPES)
def test_every_training_type_of_every_family_builds_from_nothing_and_validates(training_type, family):
    assert CONFIG_TYPES[training_type]().training_type == training_type  # {} is a whole config of the type
    chosen = {**REQUIRED.get(training_type, {}), **FAMILIES[family]}
    config = config_for(training_type, **chosen)
    assert type(config) is CONFIG_TYPES[training_type]
    values = {k: v for k, v in config.model_dump().items() if k != "training_type"}
    again, problems = validate_values(training_type, values)
    assert again == config and not [p for p in problems if p.level == "error"]
    for name, field in type(config).model_fields.items():  # untouched options carry the schema's default
        if name not in chosen and name != "output_name":  # TI names its output after the token
            assert getattr(config, name) == field.default, name


def test_an_option_a_training_type_lacks_reads_as_the_schemas_default():
    dreambooth = config_for("dreambooth")
    assert option(dreambooth, "module_dropout") == schema_default("module_dropout") == 0.0
    assert option(config_for("lora", module_dropout=0.2), "module_dropout") == 0.2
    with pytest.raises(KeyError, match="different default per training type"):
        option(config_for("lora"), "learning_rate_te")  # DreamBooth 1e-5, fine-tuning 0: no single answer
    with pytest.raises(TypeError, match="config_for"):
        option(type("Partial", (), {"module_dropout": 0})(), "module_dropout")
