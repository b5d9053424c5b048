"""The plans are declared lists (deploy.py): which one a deploy runs, and what each holds."""

from __future__ import annotations

import io

from shipyard import deploy
from shipyard.config import HostConfig
from shipyard.context import Deploy
from shipyard.report import Reporter


def names(plan) -> list[str]:
    return [p.name for p in plan]


def a_deploy(kind: str = "push", peers: list[str] | None = None) -> Deploy:
    host = HostConfig(peers=peers or [])
    return Deploy(None, host, 1, "a" * 40, "refs/heads/main", Reporter(io.StringIO()), kind=kind)


def test_each_deploy_runs_its_declared_plan():
    assert deploy.plan(a_deploy()) is deploy.PUSH
    assert deploy.plan(a_deploy(peers=["h:1"])) is deploy.PUSH_MANY
    assert deploy.plan(a_deploy("rollback")) is deploy.ROLLBACK
    assert deploy.plan(a_deploy("rollback", ["h:1"])) is deploy.ROLLBACK_MANY
    assert deploy.peer_prepare(a_deploy()) is deploy.PEER_PREPARE
    assert deploy.peer_prepare(a_deploy("rollback")) is deploy.PEER_PREPARE_KEPT


def test_a_rollback_is_its_own_flow_that_builds_and_migrates_nothing():
    for plan in (deploy.ROLLBACK, deploy.ROLLBACK_MANY, deploy.PEER_PREPARE_KEPT):
        assert deploy.CHECKOUT not in plan and deploy.MIGRATE not in plan
        assert not {"link", "venv", "build", "data"} & set(names(plan))
    for plan in deploy.RESUME_ROLLBACK.values():
        assert deploy.POST_MIGRATE not in plan
    assert names(deploy.ROLLBACK_MANY)[-3:] == ["rollout", "post-migrate", "finish"]


def test_many_hosts_fold_the_switch_into_one_rollout():
    assert names(deploy.PUSH_MANY) == [
        *names(deploy.PUSH)[: names(deploy.PUSH).index("switch")],
        "rollout",
        "post-migrate",
        "finish",
    ]
    assert names(deploy.ROLLOUT_HERE) == ["switch", "restart", "verify"]


def test_recovery_resumes_every_phase_after_the_switch_and_no_other():
    after = names(deploy.PUSH)[names(deploy.PUSH).index("switch") :]
    assert set(deploy.RESUME) == {*after, "maintenance-off"}
    assert set(deploy.RESUME) == set(deploy.RESUME_ROLLBACK)
    assert not set(deploy.RESUME) & set(deploy.BEFORE_SWITCH)
    assert set(names(deploy.PUSH)[: names(deploy.PUSH).index("switch")]) <= set(
        deploy.BEFORE_SWITCH
    )
    d = a_deploy()
    d.options = {"maintenance": ""}
    assert names(deploy.resume(d, "switch")) == [
        "restart",
        "verify",
        "maintenance-off",
        "post-migrate",
        "finish",
    ]
