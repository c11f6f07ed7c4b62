"""SIGHUP reads the config file again and applies what can change without a restart.

What a running node can take live is listed per role as I{appliers}: a key
set and a function given the new settings.  The log level is live for every
role; a relay adds its exit policy (republished at once) and its bandwidth
limits (L{meshvpn.roles.relaylive}).  Every other key that changed is named
in one warning line as waiting for a restart, and stays as it was.  A file
that no longer reads or validates changes nothing: the error is logged and
the node keeps running as it was, as an operator expects from
C{systemctl reload}.  systemd is told C{RELOADING=1} then C{READY=1}.
"""

import signal

import attrs
from twisted.logger import Logger

from meshvpn import logoutput, sdnotify
from meshvpn.errors import ConfigError
from meshvpn.roles.sigterm import SignalWhileRunning


@attrs.frozen
class Applier:
    """C{apply(newSettings)} for a change to any of C{keys} (underscore names); returns what it did."""

    keys: frozenset
    apply: object


def logLevelApplier():
    def apply(settings):
        logoutput.setLevel(settings["log_level"])
        return f"log level {settings['log_level']}"

    return Applier(frozenset({"log_level"}), apply)


class ReloadOnSIGHUP(SignalWhileRunning):
    """
    @param options: the role's parsed L{meshvpn.config.RoleOptions} (its
        C{reread()} gives the new settings, its C{settings} the running ones).
    """

    log = Logger()

    SIGNAL = signal.SIGHUP

    def __init__(self, reactor, options, appliers, environ=None, notify=sdnotify.notify):
        super().__init__(reactor)
        self._options = options
        self._appliers = list(appliers)
        self._environ = environ
        self._notify = notify
        self.reloads = 0

    def onSignal(self):
        self.reload()

    def reload(self):
        """
        Apply the config file as it is now.  @return: the list of what was
        applied (empty when nothing changed or the file was refused).
        """
        self._notify(self._environ, RELOADING=1, STATUS="reloading")
        try:
            return self._reload()
        finally:
            self._notify(self._environ, READY=1, STATUS="running")

    def _reload(self):
        running = self._options.settings
        try:
            new = self._options.reread()
        except ConfigError as e:
            self.log.error("reload refused, running settings kept: {error}", error=str(e))
            return []
        changed = {key for key in new if new[key] != running.get(key)}
        live = set()
        done = []
        for applier in self._appliers:
            keys = changed & applier.keys
            if not keys:
                continue
            try:
                done.append(applier.apply(new))
            except Exception as e:  # a bad value only a running part can see: keep the old one
                self.log.error("reload of {keys} failed, kept as it was: {error}", keys=", ".join(sorted(keys)), error=e)
                continue
            live |= keys
            for key in keys:
                running[key] = new[key]
        waiting = sorted(changed - live - _refusedKeys(self._appliers, changed, live))
        if waiting:
            self.log.warn("reload: changed but only applied on restart: {keys}",
                          keys=", ".join(k.replace("_", "-") for k in waiting))
        self.reloads += 1
        self.log.info("reload {n}: {what}", n=self.reloads, what="; ".join(done) if done else "nothing live changed")
        return done


def _refusedKeys(appliers, changed, live):
    """Keys a live applier owns but failed on: already logged as errors."""
    owned = set()
    for applier in appliers:
        owned |= applier.keys
    return (changed & owned) - live
