"""The ``[lbactors]`` group of octavia.conf, read by the provider driver and the provider agent.

Defaults are ``lbactors serve``'s own defaults (``[amqp]`` in ``contrib/lbactors.toml``), so
with both sides on their defaults nothing needs to be set but ``[DEFAULT] transport_url``.
``oslo-config-generator --namespace lbactors.octavia`` lists them (``list_opts``).
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

GROUP = "lbactors"

OPTS = [
    cfg.StrOpt(
        "topic",
        default="vmware_nsx__lb_listener",
        help="Topic the driver casts operations to; lbactors serve's [amqp] topic.",
    ),
    cfg.StrOpt(
        "driver_topic",
        default="vmware_nsx__driver_listener",
        help="Topic the provider agent consumes status and statistics casts on; "
        "lbactors serve's [amqp] driver_topic.",
    ),
    cfg.StrOpt(
        "exchange",
        default="common",
        help="oslo.messaging exchange of both topics; lbactors serve's [amqp] exchange.",
    ),
    cfg.FloatOpt(
        "rpc_timeout",
        default=30.0,
        min=1.0,
        help="Seconds the driver waits for lbactors serve to answer a flavor or "
        "availability-zone call before the API request fails.",
    ),
    cfg.IntOpt(
        "status_retry_attempts",
        default=5,
        min=1,
        help="Tries the agent gives a status entry whose object Octavia has not committed "
        "yet (Octavia calls the driver before it commits) before it logs and drops it.",
    ),
    cfg.FloatOpt(
        "status_retry_initial_delay",
        default=0.5,
        min=0.0,
        help="Seconds before the second try of an uncommitted entry; doubled after each try.",
    ),
    cfg.FloatOpt(
        "status_retry_max_delay",
        default=4.0,
        min=0.0,
        help="Longest wait between two tries of an uncommitted entry. With the defaults an "
        "entry is tried after 0, 0.5, 1.5, 3.5 and 7.5 seconds.",
    ),
    cfg.StrOpt(
        "parent_lookup",
        default="auto",
        choices=[
            ("auto", "database inside a process where Octavia's database is configured "
             "(octavia-api), else driver_agent"),
            ("database", "Octavia's own get code in this process (driver_get.process_get)"),
            ("driver_agent", "octavia-lib's DriverLibrary on the driver agent's get socket"),
        ],
        help="Where the driver reads the parents it nests into a payload (a pool's listener "
        "and load balancer, a member's pool, ...). The driver agent forks a process and opens "
        "a database session per lookup (about 0.2 s each on 2 CPUs); 'database' runs the same "
        "Octavia code in octavia-api itself.",
    ),
    cfg.StrOpt(
        "agent_writes",
        default="auto",
        choices=[
            ("auto", "database where Octavia's database is configured (the driver agent's "
             "provider agent processes), else driver_agent"),
            ("database", "the driver agent's own update code in the provider agent's process"),
            ("driver_agent", "octavia-lib's DriverLibrary on the driver agent's sockets"),
        ],
        help="How the provider agent writes statuses and statistics and checks that an object "
        "is committed. Over the sockets each call forks a process in the driver agent that "
        "opens a database session (about 0.2 s on 2 CPUs); 'database' runs the same Octavia "
        "code in the agent's process.",
    ),
    cfg.StrOpt(
        "provider_name",
        default="lbactors",
        help="The provider name of this driver in [api_settings] enabled_provider_drivers; "
        "get_active_loadbalancers lists the ACTIVE load balancers of this provider.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> Any:
    """Register the ``[lbactors]`` options on ``conf`` (idempotent) and return the group."""
    conf.register_opts(OPTS, group=GROUP)
    return getattr(conf, GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For ``oslo-config-generator`` (entry point ``oslo.config.opts: lbactors.octavia``)."""
    return [(GROUP, list(OPTS))]
