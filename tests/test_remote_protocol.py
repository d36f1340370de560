"""The remote engine's first part (app.remote): the live-setting messages a client may send and the server's
defences, without a network."""

import json

import pytest

from app.remote.protocol import MAX_MESSAGE_BYTES, ProtocolError, apply_changes, encode_message, parse_message
from app.remote.security import SecurityError, check_bind, new_token, read_token, token_accepted
from core.stream import StreamEngine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def test_a_message_is_checked_before_anything_reaches_the_engine():
    assert parse_message('{"prompt": "a dog", "strength": 0.4, "seed": 7}') == {"prompt": "a dog", "strength": 0.4,
                                                                               "seed": 7}
    bad = {
        "not JSON": "{prompt",
        "a JSON object": "[1, 2]",
        "one or more": "{}",
        "unknown setting": '{"steps": 2}',
        "strength: must be a number from 0.0 to 1.0": '{"strength": 1.5}',
        "seed: must be an integer": '{"seed": true}',
        "guidance: must be a number": '{"guidance": NaN}',
        "prompt: must be text": json.dumps({"prompt": "x" * 5000}),
        "at most": json.dumps({"prompt": "y" * (MAX_MESSAGE_BYTES + 1)}),
    }
    for reason, message in bad.items():
        with pytest.raises(ProtocolError, match=reason):
            parse_message(message)
    with pytest.raises(ProtocolError):
        encode_message(strength=2.0)  # a client finds out before sending


def test_changes_reach_the_engine_at_its_next_frame(tiny_components, tiny_config, make_frame):
    engine = StreamEngine(tiny_components, tiny_config.replace(t_index_list=(20, 35)))
    engine.prepare("a cat")
    engine.process(make_frame(0))
    before = engine.config
    apply_changes(engine, parse_message(encode_message(prompt="a dog", strength=0.8, seed=11, smoothing=0.5)))
    assert engine.prompt == "a cat" and engine.config == before  # queued, not yet applied
    engine.process(make_frame(1))
    assert engine.prompt == "a dog" and engine.config.seed == 11 and engine.config.smoothing == 0.5
    assert engine.config.t_index_list != before.t_index_list and len(engine.config.t_index_list) == 2


def test_the_token_is_checked_in_full(tmp_path):
    token = new_token()
    assert len(token) >= 32 and token != new_token()
    assert token_accepted(f"Bearer {token}", token)
    for header in (None, "", token, f"Basic {token}", f"Bearer {token[:-1]}", f"Bearer {token}x"):
        assert not token_accepted(header, token)
    (tmp_path / "good").write_text(token + "\n")
    assert read_token(tmp_path / "good") == token
    (tmp_path / "short").write_text("abc")
    for path, reason in ((tmp_path / "short", "at least"), (tmp_path / "missing", "cannot read")):
        with pytest.raises(SecurityError, match=reason):
            read_token(path)


def test_a_public_address_needs_tls_or_the_users_word():
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None, None, insecure=False)
    for host in ("0.0.0.0", "", "192.168.1.20"):
        with pytest.raises(SecurityError, match="--cert and --key"):
            check_bind(host, None, None, insecure=False)
        check_bind(host, "cert.pem", "key.pem", insecure=False)
        check_bind(host, None, None, insecure=True)
    with pytest.raises(SecurityError, match="both"):
        check_bind("127.0.0.1", "cert.pem", None, insecure=False)


def test_serve_refuses_a_public_address_without_tls(capsys):
    from app.commands.serve import main

    assert main(["--host", "0.0.0.0", "--model", "preset:tiny", "--device", "cpu"]) == 2
    assert "--cert and --key" in capsys.readouterr().err
