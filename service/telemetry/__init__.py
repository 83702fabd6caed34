"""Metrics, traces and the PromQL that dashboards, alerts and the autoscaler share."""
