"""The edge SDK: records agent steps on the device and sends private round summaries."""
