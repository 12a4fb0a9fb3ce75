/*
 * kafka_mock.c - librdkafka's mock Kafka cluster as a test peer.
 *
 * The mock cluster (rdkafka_mock.h) speaks the real Kafka protocol on
 * loopback TCP: producers and consumers (agentmeter, kcat) cannot tell it
 * from a broker.  Tests start this program, read the bootstrap address from
 * the first line of stdout, and steer the cluster through stdin, one
 * command per line; every command is answered with one line, `ok` or
 * `error <reason>`, so a test knows the change took effect before it goes on.
 *
 *   kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * Commands (broker ids are 1..N):
 *   down <id> | up <id>           take one broker down (connections are
 *                                 closed and refused) or bring it back
 *   down-all | up-all             the same for every broker
 *   rtt <id> <ms>                 add round-trip latency to a broker
 *   error <api> <err> <count>     the next <count> requests of <api> fail
 *                                 with <err> (rd_kafka_mock_push_request_errors)
 *   clear-errors <api>            forget pushed errors of <api>
 *   topic-error <topic> <err>     answer <err> for the topic in metadata
 *   create-topic <name> <partitions> [<replication>]
 *   leader <topic> <partition> <id>   move a partition's leader
 *   quit                          destroy the cluster and exit (EOF too)
 *
 * <api> is a number or a name (Produce, Fetch, ListOffsets, Metadata,
 * OffsetCommit, OffsetFetch, FindCoordinator, ApiVersions, InitProducerId);
 * <err> is a number or a librdkafka error name (NOT_LEADER_FOR_PARTITION,
 * REQUEST_TIMED_OUT, MSG_SIZE_TOO_LARGE, ...; the RD_KAFKA_RESP_ERR_ prefix
 * may be given).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_ERRORS 10000

static const struct {
    const char *name;
    int16_t key;
} api_names[] = {
    {"Produce", 0},      {"Fetch", 1},        {"ListOffsets", 2},      {"Metadata", 3},
    {"OffsetCommit", 8}, {"OffsetFetch", 9},  {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},   {"ApiVersions", 18}, {"InitProducerId", 22},
};

static int parse_api(const char *text, int16_t *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text != '\0' && *end == '\0' && v >= 0 && v < 100) {
        *out = (int16_t)v;
        return 0;
    }
    for (size_t i = 0; i < sizeof(api_names) / sizeof(api_names[0]); i++) {
        if (strcasecmp(api_names[i].name, text) == 0) {
            *out = api_names[i].key;
            return 0;
        }
    }
    return -1;
}

static int parse_err(const char *text, rd_kafka_resp_err_t *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text != '\0' && *end == '\0') {
        *out = (rd_kafka_resp_err_t)v;
        return 0;
    }
    const char *prefix = "RD_KAFKA_RESP_ERR_";
    if (strncmp(text, prefix, strlen(prefix)) == 0) {
        text += strlen(prefix);
    }
    const struct rd_kafka_err_desc *descs;
    size_t count;
    rd_kafka_get_err_descs(&descs, &count);
    for (size_t i = 0; i < count; i++) {
        if (descs[i].name != NULL && strcasecmp(descs[i].name, text) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

static int parse_int(const char *text, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text != NULL ? text : "", &end, 10);
    if (text == NULL || *text == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

static void reply(const char *fmt, const char *arg)
{
    if (fmt == NULL) {
        fputs("ok\n", stdout);
    } else {
        fputs("error ", stdout);
        fprintf(stdout, fmt, arg != NULL ? arg : "");
        fputc('\n', stdout);
    }
    fflush(stdout);
}

static void reply_err(rd_kafka_resp_err_t err)
{
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        reply(NULL, NULL);
    } else {
        reply("%s", rd_kafka_err2str(err));
    }
}

static int create_topic(rd_kafka_mock_cluster_t *mcluster, const char *spec, int brokers)
{
    char name[256];
    const char *colon = strrchr(spec, ':');
    long partitions = 1;
    if (colon == NULL || (size_t)(colon - spec) >= sizeof(name) ||
        parse_int(colon + 1, 1, 10000, &partitions) != 0) {
        return -1;
    }
    memcpy(name, spec, (size_t)(colon - spec));
    name[colon - spec] = '\0';
    return rd_kafka_mock_topic_create(mcluster, name, (int)partitions, brokers < 3 ? brokers : 3) ==
                   RD_KAFKA_RESP_ERR_NO_ERROR
               ? 0
               : -1;
}

int main(int argc, char **argv)
{
    long brokers = 3;
    const char *topics[64];
    int n_topics = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, 64, &brokers) != 0) {
                fprintf(stderr, "kafka_mock: --brokers wants 1..64\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc && n_topics < 64) {
            topics[n_topics++] = argv[++i];
        } else {
            fprintf(stderr, "usage: kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...\n");
            return 2;
        }
    }

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "kafka_mock: rd_kafka_new: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mcluster = rd_kafka_mock_cluster_new(rk, (int)brokers);
    if (mcluster == NULL) {
        fprintf(stderr, "kafka_mock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (int i = 0; i < n_topics; i++) {
        if (create_topic(mcluster, topics[i], (int)brokers) != 0) {
            fprintf(stderr, "kafka_mock: bad --topic %s (NAME:PARTITIONS)\n", topics[i]);
            rd_kafka_mock_cluster_destroy(mcluster);
            rd_kafka_destroy(rk);
            return 2;
        }
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mcluster));
    fflush(stdout);

    char line[1024];
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char *words[8];
        int n = 0;
        for (char *tok = strtok(line, " \t\r\n"); tok != NULL && n < 8;
             tok = strtok(NULL, " \t\r\n")) {
            words[n++] = tok;
        }
        if (n == 0) {
            continue;
        }
        const char *cmd = words[0];
        long id, count, ms, partitions, replication;
        int16_t api;
        rd_kafka_resp_err_t err;
        if (strcmp(cmd, "quit") == 0) {
            reply(NULL, NULL);
            break;
        } else if ((strcmp(cmd, "down") == 0 || strcmp(cmd, "up") == 0) && n == 2) {
            if (parse_int(words[1], 1, brokers, &id) != 0) {
                reply("no broker %s", words[1]);
                continue;
            }
            reply_err(strcmp(cmd, "down") == 0
                          ? rd_kafka_mock_broker_set_down(mcluster, (int32_t)id)
                          : rd_kafka_mock_broker_set_up(mcluster, (int32_t)id));
        } else if ((strcmp(cmd, "down-all") == 0 || strcmp(cmd, "up-all") == 0) && n == 1) {
            err = RD_KAFKA_RESP_ERR_NO_ERROR;
            for (int32_t b = 1; b <= brokers && err == RD_KAFKA_RESP_ERR_NO_ERROR; b++) {
                err = strcmp(cmd, "down-all") == 0 ? rd_kafka_mock_broker_set_down(mcluster, b)
                                                   : rd_kafka_mock_broker_set_up(mcluster, b);
            }
            reply_err(err);
        } else if (strcmp(cmd, "rtt") == 0 && n == 3) {
            if (parse_int(words[1], 1, brokers, &id) != 0 ||
                parse_int(words[2], 0, 600000, &ms) != 0) {
                reply("usage: rtt <broker> <ms>%s", NULL);
                continue;
            }
            reply_err(rd_kafka_mock_broker_set_rtt(mcluster, (int32_t)id, (int)ms));
        } else if (strcmp(cmd, "error") == 0 && n == 4) {
            if (parse_api(words[1], &api) != 0) {
                reply("unknown api %s", words[1]);
                continue;
            }
            if (parse_err(words[2], &err) != 0) {
                reply("unknown error %s", words[2]);
                continue;
            }
            if (parse_int(words[3], 1, MAX_ERRORS, &count) != 0) {
                reply("bad count %s", words[3]);
                continue;
            }
            rd_kafka_resp_err_t *errs = malloc((size_t)count * sizeof(*errs));
            if (errs == NULL) {
                reply("out of memory%s", NULL);
                continue;
            }
            for (long i = 0; i < count; i++) {
                errs[i] = err;
            }
            rd_kafka_mock_push_request_errors_array(mcluster, api, (size_t)count, errs);
            free(errs);
            reply(NULL, NULL);
        } else if (strcmp(cmd, "clear-errors") == 0 && n == 2) {
            if (parse_api(words[1], &api) != 0) {
                reply("unknown api %s", words[1]);
                continue;
            }
            rd_kafka_mock_clear_request_errors(mcluster, api);
            reply(NULL, NULL);
        } else if (strcmp(cmd, "topic-error") == 0 && n == 3) {
            if (parse_err(words[2], &err) != 0) {
                reply("unknown error %s", words[2]);
                continue;
            }
            rd_kafka_mock_topic_set_error(mcluster, words[1], err);
            reply(NULL, NULL);
        } else if (strcmp(cmd, "create-topic") == 0 && (n == 3 || n == 4)) {
            replication = brokers < 3 ? brokers : 3;
            if (parse_int(words[2], 1, 10000, &partitions) != 0 ||
                (n == 4 && parse_int(words[3], 1, brokers, &replication) != 0)) {
                reply("usage: create-topic <name> <partitions> [<replication>]%s", NULL);
                continue;
            }
            reply_err(
                rd_kafka_mock_topic_create(mcluster, words[1], (int)partitions, (int)replication));
        } else if (strcmp(cmd, "leader") == 0 && n == 4) {
            if (parse_int(words[2], 0, 10000, &partitions) != 0 ||
                parse_int(words[3], 1, brokers, &id) != 0) {
                reply("usage: leader <topic> <partition> <broker>%s", NULL);
                continue;
            }
            reply_err(rd_kafka_mock_partition_set_leader(mcluster, words[1], (int32_t)partitions,
                                                         (int32_t)id));
        } else {
            reply("unknown command %s", cmd);
        }
    }
    rd_kafka_mock_cluster_destroy(mcluster);
    rd_kafka_destroy(rk);
    return 0;
}
