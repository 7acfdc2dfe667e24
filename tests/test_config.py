"""Settings: defaults < artnote.toml < environment < flags; bad values are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from artnote.config import Settings, load_settings
from artnote.errors import ConfigError

REPO_TOML = Path(__file__).resolve().parents[1] / "artnote.toml"


def test_documented_defaults_match_the_code():
    assert load_settings(REPO_TOML, env={}) == Settings()


def test_precedence_file_env_flags(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('[model]\ndevice = "cpu"\nname = "from-file"\n[scan]\nbatch_size = 4\n')
    env = {"ARTNOTE_MODEL": "from-env", "ARTNOTE_SCAN_BATCH_SIZE": "6", "ARTNOTE_CATALOG": "x.db"}
    s = load_settings(toml, env=env, overrides={"scan": {"batch_size": 9, "max_pixels": None}})
    assert s.model.name == "from-env" and s.model.device == "cpu"
    assert s.scan.batch_size == 9 and s.catalog.url == "x.db"
    assert s.scan.max_pixels == Settings().scan.max_pixels


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[model]\ndevice = "tpu"\n', "device must be one of"),
        ("[model]\nnope = 1\n", "unknown setting [model] nope"),
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ('[scan]\nbatch_size = "many"\n', "batch_size"),
        ("[model\n", "cannot read"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, text, fragment):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(toml, env={})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_env_booleans_and_lists():
    env = {"ARTNOTE_MODEL_TRUST_REMOTE_CODE": "yes", "ARTNOTE_SCAN_EXTENSIONS": "JPG, .png"}
    s = load_settings(env=env)
    assert s.model.trust_remote_code is True
    assert s.scan.extensions == ["jpg", "png"]


def test_none_clears_an_optional_setting_that_a_file_set(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('[model]\nadapter = "latest"\nrevision = "v2"\n')
    assert load_settings(toml, env={}).model.adapter == "latest"
    s = load_settings(toml, env={"ARTNOTE_MODEL_ADAPTER": "none", "ARTNOTE_MODEL_REVISION": ""})
    assert s.model.adapter is None and s.model.revision is None


@pytest.mark.parametrize(
    "text",
    [
        "[scan]\nbatch_size = 2.9\n",  # not silently 2
        "[scan]\nbatch_size = true\n",
        "[generation]\ntemperature = true\n",  # not silently 1.0
        "[generation]\ndo_sample = 1\n",
    ],
)
def test_values_of_the_wrong_type_are_refused_not_converted(tmp_path, text):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match="cannot use"):
        load_settings(toml, env={})
