"""Every Prometheus metric of the ``wod`` service, in one registry (served at ``/metrics``)."""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from ..store.models import Operation, Status

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The service's metrics; ``operation_ended`` listens to the engine (``Engine.on_end``), the API calls ``request``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wod_requests", "Verb requests accepted", ["verb"], registry=r)
        self.finished = Counter("wod_operations_finished", "Operations finished by this process", ["status"], registry=r)
        self.recovered = Counter(
            "wod_operations_recovered", "Operations this process took over from a dead one and ended", registry=r
        )
        self.duration = Histogram(
            "wod_operation_seconds", "Duration of finished operations", ["verb"], registry=r, buckets=DURATION_BUCKETS
        )
        self.running = Gauge("wod_operations_running", "Operations running in this process", registry=r)
        self.queued = Gauge("wod_operations_queued", "Operations waiting in the database", registry=r)
        self.outbox = Gauge("wod_outbox_pending", "Portal callbacks not delivered yet", registry=r)
        self.homes_over = Gauge("wod_homes_over_size_limit", "Seats whose home was over c.Wod.home_size_limit when last measured", registry=r)
        self.ahead_cpu_total = Counter(
            "wod_ahead_cpu_seconds",
            "CPU seconds spent while idle on work done ahead for the next operations, by work: hash (passwords for the "
            "next rotations), background (staging free seats, compiling templates, sweeps)",
            ["work"],
            registry=r,
        )
        for status in Status.FINISHED:
            self.finished.labels(status)  # exported at 0 before the first operation ends
        for work in ("hash", "background"):
            self.ahead_cpu_total.labels(work)
        # The portal's mail API (wod_jupyterhub/mail): told by its ingress and relay as things happen.
        self.mail_received_total = Counter("wod_mail_received", "Portal mails accepted, by kind (verb, relay)", ["kind"], registry=r)
        self.mail_refused_total = Counter("wod_mail_refused", "Mails and connections refused, by reason", ["reason"], registry=r)
        self.mail_duplicates = Counter("wod_mail_duplicates", "Mails received again and not acted on twice", registry=r)
        self.mail_relay_total = Counter("wod_mail_relay", "Relay attempts by outcome (relayed, retried, failed)", ["outcome"], registry=r)
        self.mail_pending = Gauge("wod_mail_relay_pending", "Participant mails waiting for the smarthost", registry=r)
        for kind in ("verb", "relay"):
            self.mail_received_total.labels(kind)

    # ---- events

    def request(self, verb: str) -> None:
        """Count one request for ``verb``."""
        self.requests.labels(verb).inc()

    def ahead_cpu(self, work: str, seconds: float) -> None:
        """CPU a thread spent on work ahead (``SeatWork``'s ``on_ahead_cpu``; called from that thread)."""
        self.ahead_cpu_total.labels(work).inc(seconds)

    def operation_ended(self, run, verb: str, status: str, seconds: float, recovered_from=None) -> None:
        """An operation this process ran ended (the signature of an ``Engine.on_end`` listener)."""
        self.finished.labels(status).inc()
        self.duration.labels(verb).observe(seconds)
        if recovered_from:
            self.recovered.inc()

    def mail_received(self, kind: str) -> None:
        """Count one mail taken (``verb`` or ``relay``)."""
        self.mail_received_total.labels(kind).inc()

    def mail_refused(self, reason: str) -> None:
        """Count one mail refused, by its reason."""
        self.mail_refused_total.labels(reason).inc()

    def mail_duplicate(self) -> None:
        """Count one mail taken again (the same verb mail twice)."""
        self.mail_duplicates.inc()

    def mail_relay(self, outcome: str) -> None:
        """Count one relay attempt, by its outcome."""
        self.mail_relay_total.labels(outcome).inc()

    # ---- scrape

    def render(self, *, store, running: int, outbox=None, relay=None, disk=None) -> bytes:
        """The text exposition, gauges read now: ``running`` operations, queued ones from ``store``,
        ``outbox`` pending, ``relay`` (the mail relay) pending, ``disk`` (homes over their size limit)."""
        self.running.set(running)
        with store.Session() as s:
            self.queued.set(s.scalar(select(func.count()).select_from(Operation).where(Operation.status == Status.QUEUED)))
        if outbox is not None:
            self.outbox.set(outbox.pending())
        if relay is not None:
            self.mail_pending.set(relay.stats()["pending"])
        if disk is not None:
            self.homes_over.set(len(disk.over()))
        return generate_latest(self.registry)
