"""Running Sotto: settings, key stores, the local Kafka broker and the `sotto` command line."""
