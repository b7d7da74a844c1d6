"""First-party reward plugins (installed as ``posttrain.rewards``), written against the public API."""
