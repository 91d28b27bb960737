"""Which mode and which server: ``--api``/``--profile`` first, then ``HOOKPOST_API_URL``, else direct; the token
from ``--token-file``, the profile, then ``HOOKPOST_API_TOKEN``; the profiles file (XDG, 0600); no token in the
clear to another host."""

import stat
import tomllib

import pytest

from hookpost.cli.target import check_url, profiles_path, read_profiles, resolve, write_profiles
from hookpost.common.errors import ConfigError, InvalidInputError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    for var in ("HOOKPOST_API_URL", "HOOKPOST_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))


def test_direct_unless_told_otherwise():
    assert not resolve().is_api


def test_precedence_of_the_url(monkeypatch):
    write_profiles({"prod": {"api": "https://prod.example", "token": "hp_fromprofile"}})
    monkeypatch.setenv("HOOKPOST_API_URL", "https://env.example/")
    monkeypatch.setenv("HOOKPOST_API_TOKEN", "hp_fromenv")
    env = resolve()
    assert (env.api, env.source, env.token, env.token_source) == ("https://env.example", "HOOKPOST_API_URL",
                                                                  "hp_fromenv", "HOOKPOST_API_TOKEN")
    flag = resolve(api="https://flag.example")
    assert (flag.api, flag.source, flag.token) == ("https://flag.example", "--api", "hp_fromenv")
    prof = resolve(profile="prod")
    assert (prof.api, prof.source, prof.token, prof.token_source) == ("https://prod.example", "profile prod",
                                                                      "hp_fromprofile", "profile prod")


def test_token_file_comes_first(monkeypatch, tmp_path):
    write_profiles({"prod": {"api": "https://prod.example", "token": "hp_fromprofile"}})
    monkeypatch.setenv("HOOKPOST_API_TOKEN", "hp_fromenv")
    (tmp_path / "tok").write_text("  hp_fromfile\n")
    t = resolve(profile="prod", token_file=str(tmp_path / "tok"))
    assert t.token == "hp_fromfile" and t.token_source.startswith("--token-file")
    assert "hp_fromfile" not in repr(t)
    with pytest.raises(InvalidInputError, match="cannot read --token-file"):
        resolve(api="https://x.example", token_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidInputError, match="is empty"):
        resolve(api="https://x.example", token_file=str(tmp_path / "empty"))


def test_unknown_profile_and_broken_file(tmp_path):
    with pytest.raises(InvalidInputError, match=r"no profile 'prod'.*known: none yet"):
        resolve(profile="prod")
    profiles_path().parent.mkdir(parents=True)
    profiles_path().write_text("[profiles.prod\napi = ")
    with pytest.raises(ConfigError, match="cannot read"):
        read_profiles()


def test_profiles_file_is_private_and_round_trips(tmp_path):
    odd = {"a b": {"api": "https://x.example", "token": 'hp_"quoted"\\slash', "insecure": True}}
    path = write_profiles(odd)
    assert path == tmp_path / "hookpost" / "profiles.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert tomllib.loads(path.read_text())["profiles"] == odd
    path.chmod(0o644)
    write_profiles({})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000",
                                 "http://127.0.0.2", "https://hookpost.example.com"])
def test_token_may_go_to(url):
    assert check_url(url, insecure=False) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://hookpost.example.com", "http://10.0.0.5:8000", "http://localhost.evil.com"])
def test_no_token_in_the_clear_to_another_host(url):
    with pytest.raises(InvalidInputError, match="plain http"):
        check_url(url, insecure=False)
    assert check_url(url, insecure=True) == url


@pytest.mark.parametrize("url", ["ftp://x", "hookpost.example.com", "https://"])
def test_not_a_url(url):
    with pytest.raises(InvalidInputError, match="http:// or https://"):
        check_url(url, insecure=False)
