"""interlock.testing.pytest_plugin: a user's test asking for ``interlock_url`` runs once per selected
backend, each time in a fresh namespace; bad selections are usage errors."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import threading
import interlock

SEEN = []

def test_counter(interlock_url):
    SEEN.append(interlock_url)
    lock = interlock.Lock("counter", url=interlock_url)
    total = [0]

    def work():
        for _ in range(50):
            with lock:
                total[0] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert total[0] == 200
    first = lock.acquire()
    assert not first.previous_owner_died
    first.release()

def test_fresh_namespace(interlock_url):
    # the same name in every test: a fresh namespace, so nobody holds it and no token is known
    (s,) = [x for x in [interlock.Semaphore("pool", 2, url=interlock_url).statistics()]]
    assert s.holders == () and s.available == 2

def test_urls_are_distinct():
    assert len(SEEN) == len(set(SEEN))
'''


@pytest.mark.parametrize(("option", "expected"), [
    ((), {"memory", "file"}),
    (("--interlock-backends=memory,file,redis",), {"memory", "file", "redis"}),
])
def test_runs_once_per_backend(pytester: pytest.Pytester, option: tuple[str, ...], expected: set[str]) -> None:
    pytester.makeconftest('pytest_plugins = ["interlock.testing.pytest_plugin"]')
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", *option)
    result.assert_outcomes(passed=2 * len(expected) + 1)
    ran = {line.split("[", 1)[1].split("]", 1)[0] for line in result.outlines
           if "::test_counter[" in line and "PASSED" in line}
    assert ran == expected


def test_unknown_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)  # the plugin named on the command line this time
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "interlock.testing.pytest_plugin",
                                           "--interlock-backends=memory,mongo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend*mongo*"])
