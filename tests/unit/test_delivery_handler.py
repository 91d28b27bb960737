"""The delivery handler against its interfaces alone: a webhook lookup, a gate, a sender, a recorder and the
follow-ups, each a few-line stub. What the real collaborators do is tested in ``test_core_paths.py`` and the
end-to-end tests; this shows the order of the steps and who is asked what."""

from dataclasses import dataclass, field
from typing import Any

from hookpost.common.models import DeliveryMessage, EventStatus, Webhook
from hookpost.dispatcher.consumer import Verdict
from hookpost.dispatcher.delivery import DeliveryHandler, Outcome, Slot
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.policy import AttemptResult, Decision
from tests.fakes import FakeMessage

HOOK = Webhook(id="wh_1", url="http://receiver.example/hook", secret="s" * 32, event_types=["*"])


@dataclass
class Steps:
    """Every stub writes what it was asked into one list, so a test reads the order of the steps."""

    log: list[str] = field(default_factory=list)
    hook: Webhook | None = field(default_factory=lambda: HOOK)
    admit: bool = True
    answer: AttemptResult = field(default_factory=lambda: AttemptResult(status_code=200))
    new: bool = True
    outcomes: list[Outcome] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    async def get(self, webhook_id: str) -> Webhook | None:
        self.log.append("get")
        return self.hook

    def problem(self, webhook_id: str) -> str | None:
        return None

    async def enter(self, dm: DeliveryMessage, hook: Webhook) -> Slot | None:
        self.log.append("enter")
        return Slot("http://receiver.example:80", 1, hook.id, probe=dm.probe) if self.admit else None

    def leave(self, slot: Slot, result: AttemptResult) -> None:
        self.log.append("leave")

    async def observe(self, slot: Slot, result: AttemptResult) -> None:
        self.log.append("observe")

    async def send(self, hook: Webhook, event_id: str, payload: dict[str, Any]) -> AttemptResult:
        self.log.append("send")
        return self.answer

    async def record(self, outcome: Outcome) -> bool:
        self.log.append("record")
        self.outcomes.append(outcome)
        return self.new

    async def after(self, dm: DeliveryMessage, decision: Decision, result: AttemptResult | None,
                    due_ms: int | None) -> None:
        self.log.append("after")
        self.decisions.append(decision)

    async def again(self, dm: DeliveryMessage) -> None:
        self.log.append("again")


def handler(steps: Steps) -> DeliveryHandler:
    return DeliveryHandler(steps, steps, steps, steps, steps, Metrics(), delays=(0.01, 0.02), max_attempts=3)


def message(attempt: int = 1, *, probe: bool = False, redelivered: bool = False) -> FakeMessage:
    dm = DeliveryMessage(event_id="evt_1", webhook_id=HOOK.id, attempt=attempt, payload={"type": "a.b"},
                         probe=probe)
    return FakeMessage.of_delivery(dm, redelivered=redelivered)


async def test_a_delivery_goes_through_lookup_gate_send_record_and_follow_up_in_that_order():
    steps = Steps()
    assert await handler(steps).handle(message()) is Verdict.ACK
    assert steps.log == ["get", "enter", "send", "leave", "observe", "record", "after"]
    (outcome,) = steps.outcomes
    assert (outcome.event_id, outcome.attempt, outcome.changes["status"]) == ("evt_1", 1, "Finished")
    assert outcome.made is not None and outcome.made.id == "evt_1.001" and outcome.made.status_code == 200


async def test_a_delivery_the_gate_holds_or_parks_is_acked_without_a_request_or_a_record():
    steps = Steps(admit=False)
    assert await handler(steps).handle(message()) is Verdict.ACK
    assert steps.log == ["get", "enter"]


async def test_a_failed_attempt_with_attempts_left_is_recorded_retrying_with_its_due_time():
    steps = Steps(answer=AttemptResult(status_code=500))
    await handler(steps).handle(message())
    (outcome,) = steps.outcomes
    assert outcome.changes["status"] == "Retrying" and outcome.changes["next_attempt_ms"] is not None
    assert steps.decisions[0].status == EventStatus.RETRYING and steps.decisions[0].retry_level == 0


async def test_a_failed_probe_is_recorded_but_not_charged_to_the_events_budget():
    steps = Steps(answer=AttemptResult(error="ConnectError"))
    await handler(steps).handle(message(3, probe=True))  # the budget's last attempt, were it charged
    (outcome,) = steps.outcomes
    assert outcome.changes["budget_start"] == 1 and outcome.changes["status"] == "Retrying"


async def test_a_deleted_webhook_ends_the_event_failed_without_a_request():
    steps = Steps()
    steps.hook = None
    assert await handler(steps).handle(message(2)) is Verdict.ACK
    assert steps.log == ["get", "record", "after"]
    (outcome,) = steps.outcomes
    assert outcome.made is None and outcome.changes["attempt_count"] == 1  # the count stays
    assert outcome.changes["last_error"] == "webhook deleted"


async def test_a_second_copy_of_a_recorded_attempt_publishes_nothing_but_a_redelivered_one_publishes_again():
    copy = Steps(new=False)
    await handler(copy).handle(message())
    assert copy.log[-2:] == ["observe", "record"]  # made its request (the copy cannot know), published nothing

    redelivered = Steps(new=False)
    await handler(redelivered).handle(message(redelivered=True))
    assert redelivered.log[-1] == "again"


async def test_a_message_that_is_not_a_delivery_is_dead_lettered_untouched():
    steps = Steps()
    assert await handler(steps).handle(FakeMessage(b'{"event_id": 1}')) is Verdict.DEAD_LETTER
    assert steps.log == []
