"""Session options and the turn-taking detector that chooses whether pools stop spinning."""
import pytest

from kcompile.runtime.devices import TurnTaking, session_options


def runs(detector, sessions):
    seen = []
    for s in sessions:
        detector.ran(s)
        seen.append(detector.seen)
    return seen


def test_one_session_or_a_fit_with_validation_is_not_taking_turns():
    d = TurnTaking()
    assert not any(runs(d, ["train"] * 500))
    epoch = ["train"] * 20 + ["eval"] * 3  # two changes of session an epoch
    assert not any(runs(d, epoch * 30))


def test_sessions_stepping_in_turn_are_seen_at_the_eighth_change_and_stay_seen():
    d = TurnTaking()
    seen = runs(d, ["generator", "discriminator", "gan"] * 4)
    assert seen.index(True) == TurnTaking.SWITCHES  # the first run changes nothing
    assert all(runs(d, ["train"] * 100))


def test_changes_older_than_the_window_do_not_count():
    d = TurnTaking()
    sparse = (["a"] * (TurnTaking.WINDOW // 4) + ["b"] * (TurnTaking.WINDOW // 4)) * 20
    assert not any(runs(d, sparse))  # four changes in any window


def test_session_options_stop_spinning_when_asked():
    entry = "session.force_spinning_stop"
    assert session_options().get_session_config_entry(entry) == "0"
    assert session_options(stop_spinning=True).get_session_config_entry(entry) == "1"


def test_a_run_follows_itself_only_after_a_run_of_the_same_session_seen_or_not():
    d = TurnTaking()
    assert not d.follows_itself("a")
    d.ran("a")
    assert d.follows_itself("a") and not d.follows_itself("b")
    runs(d, ["a", "b"] * 8)
    assert d.seen and d.follows_itself("b") and not d.follows_itself("a")
    d.ran("a")
    assert d.follows_itself("a")


def test_built_at_once_runs_the_makers_together_in_order(monkeypatch):
    import threading

    from kcompile.runtime import devices
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    together = threading.Barrier(2, timeout=10)  # (broken, and the test failed, unless both run at once)

    def maker(i):
        return lambda: together.wait() * 0 + i
    assert devices.built_at_once([maker(0), maker(1)]) == [0, 1]
    assert devices.built_at_once([lambda: 5]) == [5]

    def fails():
        raise RuntimeError("no kernel")
    with pytest.raises(RuntimeError, match="no kernel"):
        devices.built_at_once([lambda: 1, fails])
    monkeypatch.setattr(devices, "cpu_cores", lambda: 1)  # (one core: one after the other, in order)
    ran = []
    assert devices.built_at_once([lambda: ran.append(1) or 1, lambda: ran.append(2) or 2]) == [1, 2] and ran == [1, 2]
