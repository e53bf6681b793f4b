"""The answers one web process holds (connections.cache.token_cache): a bounded least-recently-used store, with
the versions of the tokens they were given from.

Past its bound the store drops the answer used longest ago, not every answer: with more (key, connection) pairs
than it holds, those asked for most stay. Each token's answers are indexed, so that a change to one token (read
from the change log) drops them without a look at the others, and a token's versions are kept only while an
answer of it is held: the store's memory stays bounded however many tokens pass through it.
"""

from collections import OrderedDict, deque
from typing import Any, Protocol

TokenVersion = tuple[int, str]  # a token row's (generation, state)
# How long a change read from the log is remembered, so that an answer read before it and kept only after it is not
# kept (its token's versions might not tell: a write that changed the access token alone). An answer whose read is
# older than this when it is kept is not kept either.
RECENT_SECONDS = 10.0
AnswerKey = tuple[str, ...]  # answer_key()


def answer_key(key_id: str, slug: str, for_proxy: bool = False) -> AnswerKey:
    """(bot key id, connection slug) for a token answer; the API proxy's answer for the same pair is kept beside it."""
    return (key_id, slug, "proxy") if for_proxy else (key_id, slug)


class Held(Protocol):
    """What the store needs of an answer (token_cache.CachedAnswer)."""

    @property
    def answer_key(self) -> AnswerKey: ...
    @property
    def token_id(self) -> int: ...
    @property
    def token_version(self) -> TokenVersion: ...
    @property
    def read_at(self) -> float: ...  # clock() no later than the read the answer came from


class AnswerStore:
    """The answers and what they depend on. Not thread-safe by itself: its owner holds a lock around each call."""

    def __init__(self) -> None:
        # Least recently used first: a hit moves its answer to the end (hit()), and past the bound the first goes.
        self.answers: OrderedDict[AnswerKey, Any] = OrderedDict()
        self.by_token: dict[int, set[AnswerKey]] = {}  # the answers held of each token
        self.tokens: dict[int, TokenVersion] = {}  # the versions of the tokens answers are held of, as last known
        self.pending: set[int] = set()  # tokens of answers kept since the last report: their versions to read
        self.changed: dict[int, float] = {}  # token id -> clock() once a report had read its latest change
        self.changes: deque[tuple[float, int]] = deque()  # the same, oldest first, to forget them after a while
        self.read_after = float("-inf")  # an answer read before this clock() is not kept (a change may be missed)

    def keep(self, cached: Held, *, limit: int, now: float) -> bool:
        """Hold one more answer, dropping those used longest ago past `limit`; False if it may be older than a change
        already read from the log (then it is not held). Until a report reads them, its token's versions are taken
        as it read them, if its generation is newer than the one known (a generation only grows)."""
        answer_key = cached.answer_key
        self.drop(answer_key)
        if (
            now - cached.read_at > RECENT_SECONDS
            or cached.read_at < self.read_after
            or self.changed.get(cached.token_id, float("-inf")) >= cached.read_at
        ):
            return False
        while self.answers and len(self.answers) >= limit:
            self.drop(next(iter(self.answers)))
        self.answers[answer_key] = cached
        self.by_token.setdefault(cached.token_id, set()).add(answer_key)
        known = self.tokens.get(cached.token_id)
        if known is None or known[0] < cached.token_version[0]:
            self.tokens[cached.token_id] = cached.token_version
        self.pending.add(cached.token_id)
        return True

    def changes_note(self, token_ids: set[int], now: float) -> None:
        """These tokens' changes were read by a report that ended at `now`: an answer read before is not kept."""
        for token_id in token_ids:
            self.changed[token_id] = now
            self.changes.append((now, token_id))
        while self.changes and now - self.changes[0][0] > RECENT_SECONDS:
            seen, token_id = self.changes.popleft()
            if self.changed.get(token_id) == seen:
                del self.changed[token_id]

    def hit(self, answer_key: AnswerKey) -> None:
        self.answers.move_to_end(answer_key)  # used most recently: dropped last

    def drop(self, answer_key: AnswerKey) -> None:
        """Forget one answer; its token's versions too, once no answer of it is left."""
        cached = self.answers.pop(answer_key, None)
        if cached is None:
            return
        held = self.by_token.get(cached.token_id)
        if held is not None:
            held.discard(answer_key)
            if not held:
                del self.by_token[cached.token_id]
                self.tokens.pop(cached.token_id, None)

    def token_forget(self, token_id: int) -> None:
        """The token changed: every answer of it goes."""
        for answer_key in list(self.by_token.get(token_id, ())):
            self.drop(answer_key)
        self.tokens.pop(token_id, None)

    def forget(self, *, slug: str | None) -> None:
        """Every answer (slug None), or those of one connection."""
        if slug is None:
            self.answers.clear()
            self.by_token.clear()
            self.tokens.clear()
            return
        for answer_key in [answer_key for answer_key in self.answers if answer_key[1] == slug]:
            self.drop(answer_key)

    def versions_take(self, versions: dict[int, TokenVersion]) -> None:
        """The versions a report read, for the tokens an answer is still held of."""
        for token_id, version in versions.items():
            if token_id in self.by_token:
                self.tokens[token_id] = version
