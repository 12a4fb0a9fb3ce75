/*
 * prometheusremotewrite_internal.h - the remote-write encoder, shared by the
 * exporter (prometheusremotewrite.c) and its unit tests.
 */
#ifndef AM_PROMETHEUSREMOTEWRITE_INTERNAL_H
#define AM_PROMETHEUSREMOTEWRITE_INTERNAL_H

#include "am_metrics.h"

/* The headers every request carries (Remote-Write 1.0); user `headers`
 * cannot replace them. */
#define AM__PRW_VERSION "0.1.0"
#define AM__PRW_USER_AGENT "agentmeter/" AM_VERSION

/* Encode `set` as a snappy block-compressed protobuf WriteRequest.
 *
 * One TimeSeries per counter/gauge series, and per histogram series the
 * classic _bucket{le} (each bound, then "+Inf"), _sum and _count series.
 * Labels: the series' own, __name__, then each external label the series
 * does not already have; sorted by name (byte order).  Each TimeSeries has
 * one sample at the series' timestamp.
 *
 * external: n_external labels with valid names (the caller checked them).
 * On success *body is malloc'd (caller frees with am_free), *body_len its
 * size and *n_samples the number of samples.  Returns 0, AM_ENOMEM, or
 * AM_ENOENT when the set holds no series (nothing to send). */
int am__prw_encode(const am_metric_set_t *set, const am_label_t *external, size_t n_external,
                   uint8_t **body, size_t *body_len, size_t *n_samples);

#endif
