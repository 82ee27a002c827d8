"""The Octavia side of lbactors: a provider driver and a provider agent on octavia-lib.

Install with ``pip install 'lbactors[octavia]'`` into Octavia's environment. The daemon never
imports this package (octavia-lib and oslo.messaging are optional); Octavia loads it through
its entry points:

- ``octavia.api.drivers: lbactors`` → :class:`lbactors.octavia.driver.LbactorsProviderDriver`
  (inside octavia-api): casts every operation to ``lbactors serve`` exactly as vmware-nsx's
  ``NSXOctaviaDriver`` does, so the daemon serves either driver alike;
- ``octavia.driver_agent.provider_agents: lbactors`` →
  :func:`lbactors.octavia.agent.lbactors_provider_agent` (inside octavia-driver-agent):
  receives the daemon's ``update_loadbalancer_status`` / ``update_listener_statistics`` casts
  and writes them through octavia-lib's ``DriverLibrary``, retrying the entries of objects
  Octavia has not committed yet; answers ``get_active_loadbalancers``.

Options: the ``[lbactors]`` group of octavia.conf (:mod:`lbactors.octavia.config`).
"""
