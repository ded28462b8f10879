"""
Where the controls meet a call: before it is forwarded (budget admission and
reservation, routing, cache look-up) and when it ends (reservation released, spend
counted, answer cached). One L{Ticket} carries a call's decisions between the two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from modeltrack.controls.alerts import BudgetAlerts
from modeltrack.controls.budgets import Admission, BudgetAction, BudgetLedger, BudgetPeriod, BudgetStatus, Who, day_of
from modeltrack.controls.cache import Entry, ResponseCache
from modeltrack.controls.keys import Caller, Refusal
from modeltrack.controls.routing import RouteAction, Routing, RoutingStats, Rule
from modeltrack.failures import unmetered_billable
from modeltrack.pricing.prices import Price, PriceBook
from modeltrack.pricing.usage import Usage, limit_from
from modeltrack.providers.dialect import Endpoint

#: Output tokens reserved for a call that names no maximum.
DEFAULT_RESERVED_OUTPUT_TOKENS = 4096
#: Input tokens that content referred to by URL or id may take, for a model whose
#: context window genai-prices does not know.
DEFAULT_CONTEXT_TOKENS = 200_000
_OUTPUT_LIMITS = ("max_tokens", "max_output_tokens", "max_completion_tokens")

#: Keys whose value brings input the body does not hold: a file, an earlier response
#: or conversation, an MCP server's or a container's content.
_REFERENCE_KEYS = frozenset(
    ("file_id", "file_url", "previous_response_id", "conversation", "mcp_servers", "container")
)
#: Keys holding a URL: content fetched by the provider unless it is a data: URL (inline).
_URL_KEYS = frozenset(("url", "image_url"))
#: Server-side tools whose results become input tokens.
_FETCHING_TOOLS = ("web_search", "web_fetch", "file_search", "mcp", "code_interpreter", "code_execution")


def refers_to_content(body: Any) -> bool:
    """
    Does a request bring in input its body does not hold (see L{_REFERENCE_KEYS},
    L{_URL_KEYS}, L{_FETCHING_TOOLS})? The parsed body is walked, so that no JSON
    spelling of a key (escapes) hides it.
    """
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if value is None:
                    continue
                if key in _REFERENCE_KEYS or (key == "prompt" and isinstance(value, dict) and "id" in value):
                    return True  # ("prompt" by id: a Responses prompt template; else inline text)
                if key in _URL_KEYS and isinstance(value, str) and not value.startswith("data:"):
                    return True
                if key == "type" and isinstance(value, str) and value.startswith(_FETCHING_TOOLS):
                    return True
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))
    return False


#: The controls' fields of an event no control acted on; set by the controls otherwise
#: (L{Ticket.event_fields}).
NO_CONTROLS: dict[str, Any] = {
    "budget_scope": None,
    "budget_status": None,
    "routed": False,
    "routed_from": None,
    "routing_rule": None,
    "cache_hit": False,
    "saved_usd": None,
}


@dataclass(slots=True)
class Ticket:
    """
    One call's standing with the controls.

    @ivar refusal: (error type, message) when the call must not be forwarded.
    @ivar cache_key: set when the call's answer may come from, or go to, the cache.
    @ivar hit: the cached answer, when there is one.
    """

    admission: Admission = field(default_factory=Admission)
    rule: Rule | None = None
    routed_from: str | None = None
    refusal: tuple[str, str] | None = None
    refusal_code: int = 429
    cache_key: bytes | None = None
    hit: Entry | None = None
    body: bytes | None = None
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def event_fields(self, saved: Decimal | None) -> dict[str, Any]:
        if self is NO_TICKET:
            return NO_CONTROLS
        budget = self.admission.budget
        return {
            "budget_scope": budget.scope if budget else None,
            "budget_status": self.admission.status if budget else None,
            "routed": self.rule is not None and self.rule.action == RouteAction.DOWNGRADE,
            "routed_from": self.routed_from,
            "routing_rule": self.rule.name if self.rule else None,
            "cache_hit": self.hit is not None,
            "saved_usd": None if saved is None else float(saved),
        }


NO_TICKET = Ticket()


class UnmeteredBillable(StrEnum):
    """
    What becomes of a call the provider bills but the proxy cannot meter from its
    answer (C{--unmetered-billable}); each leaves an unpriced event either way.
    """

    ALLOW = "allow"
    BLOCK_UNDER_BUDGET = "block-under-budget"  # refused for a caller any block budget holds
    DENY = "deny"


class Gate:
    """
    Where the controls meet a call: L{admit} before it is forwarded (routing, the
    cache, budget reservations), L{settle} and L{store} at its end. The prices are
    here too, since budgets reserve a call's worst case and routing counts what a
    downgrade saved.
    """

    def __init__(
        self,
        prices: PriceBook,
        ledger: BudgetLedger | None = None,
        routing: Routing | None = None,
        cache: ResponseCache | None = None,
        alerts: BudgetAlerts | None = None,
        *,
        reserved_output_tokens: int = DEFAULT_RESERVED_OUTPUT_TOKENS,
        default_context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        unmetered_billable: UnmeteredBillable = UnmeteredBillable.BLOCK_UNDER_BUDGET,
    ) -> None:
        self.prices = prices
        self.unmetered_billable = UnmeteredBillable(unmetered_billable)
        self.reserved_output_tokens = reserved_output_tokens
        self.default_context_tokens = default_context_tokens
        self.alerts = alerts
        self.ledger = ledger or BudgetLedger()
        self.routing = routing
        self.routing_stats = RoutingStats()
        self.cache = cache

    @property
    def has_controls(self) -> bool:
        """
        A budget, routing or the cache is configured: each metered call is admitted
        (otherwise it is forwarded with no admission at all).
        """
        return bool(self.ledger.budgets) or self.routing is not None or self.cache is not None

    def billable_refusal(self, endpoint: Endpoint, who: Who) -> Refusal | None:
        """
        Why a call to a route billed but not meterable is refused, if it is: always
        under C{deny}; under C{block-under-budget}, when a C{block} budget holds its
        caller (its spend there could not be counted, so the limit could not hold).
        """
        if endpoint.billing is None or self.unmetered_billable is UnmeteredBillable.ALLOW:
            return None
        if self.unmetered_billable is UnmeteredBillable.DENY or any(
            budget.action is BudgetAction.BLOCK for budget in self.ledger.matching(who)
        ):
            return 403, "unmetered_billable", unmetered_billable(endpoint.path, endpoint.billing, self.unmetered_billable)
        return None

    def admit(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw_body: bytes,
        headers: Headers,
        caller: Caller,
        request_id: str,
        seconds: float,
    ) -> Ticket | Deferred[Ticket]:
        """
        Decide a metered call to C{endpoint} before it is forwarded, at C{seconds}
        since the epoch. May rewrite C{body}'s model (a downgrade), in which case
        C{ticket.body} holds the bytes to send instead. A shared ledger answers later:
        then a L{Deferred} of the ticket.
        """
        provider, path, who, tenant = endpoint.provider, endpoint.path, caller.who, caller.key_id
        now = datetime.fromtimestamp(seconds, UTC)
        ticket = Ticket()
        day = day_of(now)
        budgets = self.ledger.matching(who)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        pressing = self.ledger.pressing(budgets, day) if self.routing is not None else None
        if self.routing is not None and pressing is not None and not _opted_out(headers, self.routing):
            budget, percent = pressing  # routing heeds the budget nearest its limit
            rule = self.routing.decide(provider, model, percent)
            if rule is not None:
                ticket.rule = rule
                if rule.action == RouteAction.BLOCK_EXPENSIVE:
                    self.routing_stats.blocked[rule.name] += 1
                    ticket.refusal = (
                        "budget_exceeded",
                        f"{budget.scope} is past {rule.threshold}% of its budget: {model} is not "
                        f"allowed by rule {rule.name}; use {rule.to_model}",
                    )
                    return ticket
                ticket.routed_from = model
                body["model"] = model = rule.to_model
                ticket.body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                self.routing_stats.routed[rule.name] += 1
                ticket.response_headers += [
                    (b"x-modeltrack-routed", b"true"),
                    (b"x-modeltrack-original-model", (ticket.routed_from or "").encode()),
                    (b"x-modeltrack-routed-to", rule.to_model.encode()),
                    (b"x-modeltrack-route-reason", f"{rule.name}: budget above {rule.threshold}%".encode()),
                ]
        if self.cache is not None and self.cache.cacheable(path, body, headers):
            ticket.cache_key = self.cache.key(provider, path, body, tenant)
            hit = self.cache.get(ticket.cache_key)
            if isinstance(hit, Deferred):  # a shared cache answers later
                return hit.addCallback(
                    self._looked_up, ticket, budgets, endpoint, model, body, raw_body, now, request_id
                )
            return self._looked_up(hit, ticket, budgets, endpoint, model, body, raw_body, now, request_id)
        return self._reserve(ticket, budgets, endpoint, model, body, raw_body, now, request_id)

    def reserve(
        self, endpoint: Endpoint, model: str | None, bound: Usage | None, body: dict[str, Any], size: int,
        caller: Caller, request_id: str, seconds: float,
    ) -> Ticket | Deferred[Ticket]:
        """
        Reserve what one response of a WebSocket session may cost, before it is asked
        for: C{bound}, or what C{body} (C{size} bytes) may cost as an HTTP call to
        C{endpoint} would. No routing and no cache: a session's frames pass untouched.
        """
        now = datetime.fromtimestamp(seconds, UTC)
        budgets = self.ledger.matching(caller.who)
        if not budgets:
            return Ticket()
        if bound is not None:
            estimate = self.prices.price(endpoint.provider, model, bound, {}, now, frozenset(bound.extra or ())).cost_usd
        else:
            estimate = self._worst_case(endpoint, model, body, size, now)
        return self._admit_estimate(Ticket(), budgets, estimate, day_of(now), request_id)

    def _looked_up(self, hit: Entry | None, ticket: Ticket, *reserve: Any) -> Ticket | Deferred[Ticket]:
        ticket.hit = hit
        if hit is not None:
            return ticket  # costs nothing: no reservation
        return self._reserve(ticket, *reserve)

    def _reserve(
        self, ticket: Ticket, budgets: list[Any], endpoint: Endpoint, model: str | None,
        body: dict[str, Any], raw_body: bytes, now: datetime, request_id: str,
    ) -> Ticket | Deferred[Ticket]:
        if budgets:
            return self._admit_estimate(ticket, budgets, self._worst_case(endpoint, model, body, len(raw_body), now),
                                        day_of(now), request_id)
        return ticket

    def _admit_estimate(
        self, ticket: Ticket, budgets: list[Any], estimate: Decimal | None, day: str, request_id: str
    ) -> Ticket | Deferred[Ticket]:
        admission = self.ledger.admit(budgets, estimate, day, request_id)
        if isinstance(admission, Deferred):
            return admission.addCallback(self._admitted, ticket, day)
        return self._admitted(admission, ticket, day)

    def _admitted(self, admission: Admission, ticket: Ticket, day: str) -> Ticket:
        ticket.admission = admission
        if admission.unavailable is not None:
            ticket.refusal = ("overloaded_error", admission.unavailable)
            ticket.refusal_code = 503
            return ticket
        refused_by = admission.budget
        if refused_by is not None and admission.status == BudgetStatus.BLOCKED:
            spend = admission.spend
            if self.alerts is not None:
                self.alerts.announce(refused_by, refused_by.period_of(day), "limit", spend)
            ticket.refusal = (
                "budget_exceeded",
                f"budget for {refused_by.scope} would be exceeded: limit {refused_by.limit} USD "
                f"per {'month' if refused_by.period is BudgetPeriod.MONTHLY else 'day'}, "
                f"spent {spend.quantize(Decimal('0.000001'))} USD, "
                f"{admission.held.quantize(Decimal('0.000001'))} USD held by calls under way",
            )
        warning = admission.warning
        if warning is not None:
            ticket.response_headers.append((b"x-modeltrack-budget-warning", warning))
        return ticket

    def release(self, ticket: Ticket) -> None:
        """
        A ticket whose call never went ahead: its reservations no longer hold.
        """
        self.ledger.release(ticket.admission)

    def _worst_case(
        self, endpoint: Endpoint, model: str | None, body: dict[str, Any], size: int, now: datetime
    ) -> Decimal | None:
        """
        The most this call's input can cost, and its output up to the limit it names:
        a token always covers at least one byte, so the body's size in bytes bounds
        the input it carries; content it refers to (a URL, a file id, an earlier
        response, a server-side tool's results) can fill the model's whole context
        window, which is added. Output: the request's own maximum, else
        L{Gate.reserved_output_tokens} (no bound: the README says so). A route whose
        requests bound their use otherwise (images) gives its own (L{Endpoint.bound}).
        """
        provider = endpoint.provider
        if endpoint.bound is not None:
            bound = endpoint.bound(body, size)
            # A bound counts each way the call may be billed: a dimension the model has
            # no rate for is one it is not billed by.
            return self.prices.price(provider, model, bound, {}, now, frozenset(bound.extra or ())).cost_usd
        output = 0 if endpoint.path == "/v1/embeddings" else self.reserved_output_tokens
        for name in _OUTPUT_LIMITS:
            if limit_from(body.get(name)):
                output = body[name]
                break
        input_tokens = size
        if refers_to_content(body):
            window = self.prices.context_window(provider, model) if model else None
            input_tokens += window or self.default_context_tokens
        usage = Usage(input_tokens=input_tokens, output_tokens=output)
        return self.prices.price(provider, model, usage, {}, now).cost_usd

    def settle(
        self,
        ticket: Ticket,
        provider: str,
        who: Who,
        price: Price,
        usage: Usage | None,
        context: dict[str, str],
        now: datetime,
    ) -> Decimal | None:
        """
        The call ended: release its reservation, count its cost, and return what the
        controls saved on it (a cache hit, or a downgrade), if anything.
        """
        day = day_of(now)
        self.ledger.settle(ticket.admission, who, day, price.cost_usd or Decimal(0))
        if price.cost_usd:
            if self.alerts is not None:
                self.alerts.check(self.ledger.spends(self.ledger.matching(who), day))
        if ticket.hit is not None:
            return Decimal(ticket.hit.cost_usd) if ticket.hit.cost_usd is not None else None
        if ticket.routed_from and usage is not None and price.cost_usd is not None and ticket.rule:
            original = self.prices.price(provider, ticket.routed_from, usage, context, now).cost_usd
            if original is not None:
                saved = original - price.cost_usd
                name = ticket.rule.name
                self.routing_stats.saved[name] = self.routing_stats.saved.get(name, Decimal(0)) + saved
                return saved
        return None

    def store(self, ticket: Ticket, code: int, phrase: bytes, headers: Headers, body: bytes, price: Price, model: str | None, now: float) -> None:
        """
        Keep a 200 answer to a cacheable call.
        """
        if self.cache is None or ticket.cache_key is None or ticket.hit is not None or code != 200:
            return
        kept = [
            (name, list(values))
            for name, values in headers.getAllRawHeaders()
            if not name.lower().startswith(b"x-modeltrack-")
        ]
        cost = None if price.cost_usd is None else str(price.cost_usd)
        self.cache.put(ticket.cache_key, Entry(code, phrase, kept, body, now, cost, model))


def _opted_out(headers: Headers, routing: Routing) -> bool:
    values = headers.getRawHeaders(routing.opt_out_header.encode("latin-1"))
    if not values:
        return False
    return values[-1].strip().lower() in (b"true", b"1", b"yes")
