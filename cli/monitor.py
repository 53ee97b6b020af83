"""`soraflow monitor`: local Prometheus + Pushgateway on loopback."""

from __future__ import annotations



def add(sub) -> None:
    p = sub.add_parser("monitor", help="local Prometheus + Pushgateway on loopback (Debian packages)",
                       description="Start Debian's prometheus and prometheus-pushgateway on 127.0.0.1 with "
                                   "monitoring/prometheus.yml and the soraflow rules; Ctrl-C stops both.")
    p.add_argument("--data-dir", default="runs/monitor", help="generated config, TSDB and server logs")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--pushgateway-port", type=int, default=9091)
    p.add_argument("--trainer", action="append", default=None, metavar="HOST:PORT",
                   help="trainer exporter target (repeatable; default 127.0.0.1:9464, the metrics_port convention)")
    p.add_argument("--scrape-interval", default=None, help="override the config's (15s), e.g. 5s")
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.monitoring.local import LocalMonitoring, MonitoringError, serve_until_interrupted

    kw = {"trainer_targets": args.trainer} if args.trainer else {}
    mon = LocalMonitoring(args.data_dir, prometheus_port=args.prometheus_port,
                          pushgateway_port=args.pushgateway_port, scrape_interval=args.scrape_interval, **kw)
    try:
        serve_until_interrupted(mon)
    except MonitoringError as exc:  # a missing server binary or a busy port: an environment problem
        print(f"soraflow monitor: error: {exc}", file=sys.stderr)
        return 1
    return 0
