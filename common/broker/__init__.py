"""dramatiq's Redis broker as we run it: the one factory every process builds its broker with
(`factory`), acks grouped into one Redis call (`grouped_acks`), reading and acting on dramatiq's
keys for `queues` and `dlq` (`inspect`), and usage messages as the upstream sends them
(`publish`)."""
