"""Parses Prometheus text exposition from stdin with the reference Python parser
(prometheus_client, Debian python3-prometheus-client) and prints one JSON object:
{"families": {name: type}, "samples": [[name, {labels}, value], ...]}."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"families": families, "samples": samples}))
