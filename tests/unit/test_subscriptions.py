"""The dispatcher's subscription index and event-type matching, without a store."""

import itertools
import random

from hookpost.common.matching import _compile, any_matches, type_matches
from hookpost.common.models import Webhook
from hookpost.dispatcher.cache import SubscriptionIndex
from tests.e2e.test_webhook_cache import event_types, random_patterns


def test_type_matches_answers_like_the_pattern_regex():
    words = ["a", "b", "ab", "c"]
    types = {".".join(p) for n in range(1, 5) for p in itertools.product(words, repeat=n)}
    patterns = {".".join(p) for n in range(1, 4) for p in itertools.product([*words, "*"], repeat=n)}
    for pattern, etype in itertools.product(patterns, types):
        expected = pattern == etype if "*" not in pattern else _compile(pattern).match(etype) is not None
        assert type_matches(pattern, etype) == expected, (pattern, etype)


def test_index_add_and_remove_keep_it_equal_to_a_scan():
    rng = random.Random(3)
    index, live = SubscriptionIndex(), {}
    for step in range(3000):
        if live and rng.random() < 0.4:
            hook = live.pop(rng.choice(sorted(live)))
            index.remove(hook)
        else:
            hook = Webhook(id=f"wh_{step:05d}", url="http://x", event_types=random_patterns(rng), secret="s",
                           active=rng.random() > 0.2)
            live[hook.id] = hook
            index.add(hook)
        if step % 100 == 0:
            for etype in event_types(rng, 30):
                assert index.match(etype) == sorted(h.id for h in live.values()
                                                    if h.active and any_matches(h.event_types, etype))
