/*
 * am_intern.c - the known-key table behind am_intern.h.
 *
 * All keys are copied once into one static block (`blob`), so "is this
 * pointer interned" is a range check plus a start-of-key check, and a fixed
 * open-addressing table (FNV-1a hash -> offset in the block) answers
 * am_intern().  The list below is the §5 conventions agentmeter reads, the
 * attributes it writes, and the keys the common SDKs put on nearly every span
 * or resource; a key missing here still works everywhere, it just costs an
 * allocation and string compares.
 */
#include "am_intern.h"

#include <pthread.h>
#include <string.h>

static const char *const known_keys[] = {
    /* OTel GenAI semantic conventions */
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.request.max_tokens",
    "gen_ai.request.temperature",
    "gen_ai.request.top_p",
    "gen_ai.request.encoding_formats",
    "gen_ai.request.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.cost",
    "gen_ai.usage.cost.amount",
    "gen_ai.usage.cost.currency",
    "gen_ai.usage.cost.source",
    "gen_ai.conversation.id",
    "gen_ai.agent.name",
    "gen_ai.agent.id",
    "gen_ai.agent.description",
    "gen_ai.tool.name",
    "gen_ai.tool.call.id",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.arguments",
    "gen_ai.tool.description",
    "gen_ai.tool.type",
    "gen_ai.embeddings.dimension.count",
    "gen_ai.output.type",
    /* OpenLLMetry (Traceloop) */
    "llm.request.type",
    "llm.usage.total_tokens",
    "llm.is_streaming",
    "traceloop.span.kind",
    "traceloop.entity.name",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "traceloop.entity.path",
    "traceloop.workflow.name",
    "traceloop.association.properties.session_id",
    "traceloop.association.properties.user_id",
    /* OpenInference */
    "openinference.span.kind",
    "llm.model_name",
    "llm.provider",
    "llm.system",
    "llm.response.model_name",
    "llm.token_count.prompt",
    "llm.token_count.completion",
    "llm.token_count.total",
    "llm.token_count.prompt_details.cache_read",
    "llm.token_count.prompt_details.cache_write",
    "llm.token_count.completion_details.reasoning",
    "llm.cost.total",
    "llm.invocation_parameters",
    "input.value",
    "input.mime_type",
    "output.value",
    "output.mime_type",
    "tool.name",
    "tool.description",
    "tool.parameters",
    "tool.arguments",
    "tool.input",
    "graph.node.id",
    /* Vercel AI SDK, Langfuse */
    "ai.model.id",
    "ai.model.provider",
    "ai.usage.inputTokens",
    "ai.usage.outputTokens",
    "ai.usage.promptTokens",
    "ai.usage.completionTokens",
    "langfuse.session.id",
    "langfuse.user.id",
    /* attribution */
    "session.id",
    "user.id",
    "enduser.id",
    "tenant.id",
    /* what agentmeter writes */
    "cost.self",
    "cost.subtree",
    "cost.trace.total",
    "cost.currency",
    "cost.status",
    "cost.price_id",
    "cost.input",
    "cost.output",
    "cost.cache_read",
    "cost.cache_write",
    "cost.reasoning",
    "cost.tool",
    "cost.compute",
    "cost.orphan",
    "cost.late",
    "cost.action",
    "cost.session.total",
    "cost.session.traces",
    "cost.budget.name",
    "cost.budget.status",
    "gpu.seconds",
    /* common span and resource keys */
    "service.name",
    "service.version",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "host.name",
    "host.arch",
    "os.type",
    "process.pid",
    "process.runtime.name",
    "process.runtime.version",
    "telemetry.sdk.name",
    "telemetry.sdk.language",
    "telemetry.sdk.version",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.node.name",
    "k8s.deployment.name",
    "container.id",
    "cloud.provider",
    "cloud.region",
    "server.address",
    "server.port",
    "url.full",
    "http.request.method",
    "http.response.status_code",
    "error.type",
    "exception.type",
    "exception.message",
    "exception.stacktrace",
    "code.function",
    "thread.id",
};

#define N_KEYS (sizeof(known_keys) / sizeof(known_keys[0]))
#define TABLE_SLOTS 512 /* power of two, > 2 * N_KEYS */
#define BLOB_MAX AM__INTERN_BLOB_MAX
#define blob am__intern_blob

char am__intern_blob[AM__INTERN_BLOB_MAX];
uint8_t am__intern_ids[AM__INTERN_BLOB_MAX];
static size_t blob_used;
static size_t ids_used;
static uint16_t key_start[TABLE_SLOTS]; /* offset + 1 into blob; 0: empty */
static uint16_t key_len[TABLE_SLOTS];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

_Static_assert(TABLE_SLOTS > 2 * N_KEYS, "intern table too small for its keys");
_Static_assert(N_KEYS <= AM_INTERN_MAX_IDS, "more keys than ids");

static uint32_t fnv1a(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    }
    return h;
}

static void table_build(void)
{
    for (size_t k = 0; k < N_KEYS; k++) {
        size_t len = strlen(known_keys[k]);
        uint32_t h = fnv1a(known_keys[k], len);
        size_t slot = h & (TABLE_SLOTS - 1);
        bool duplicate = false;
        while (key_start[slot] != 0) {
            if (key_len[slot] == len &&
                memcmp(blob + key_start[slot] - 1, known_keys[k], len) == 0) {
                duplicate = true;
                break;
            }
            slot = (slot + 1) & (TABLE_SLOTS - 1);
        }
        if (duplicate || blob_used + len + 1 > BLOB_MAX) {
            continue; /* the size is fixed at compile time; a test checks every key is in */
        }
        memcpy(blob + blob_used, known_keys[k], len + 1);
        am__intern_ids[blob_used] = (uint8_t)(++ids_used);
        key_start[slot] = (uint16_t)(blob_used + 1);
        key_len[slot] = (uint16_t)len;
        blob_used += len + 1;
    }
}

const char *am_intern(const char *s, size_t len)
{
    pthread_once(&table_once, table_build);
    if (len == 0 || len > UINT16_MAX) {
        return NULL;
    }
    uint32_t h = fnv1a(s, len);
    for (size_t slot = h & (TABLE_SLOTS - 1); key_start[slot] != 0;
         slot = (slot + 1) & (TABLE_SLOTS - 1)) {
        const char *key = blob + key_start[slot] - 1;
        if (key_len[slot] == len && memcmp(key, s, len) == 0) {
            return key;
        }
    }
    return NULL;
}

/* Linker-provided bounds (GNU ld): string literals and other read-only data
 * of the executable lie between the end of the code and the end of the
 * initialised data, where no heap, stack or mmap address can be. */
extern const char etext[];
extern const char edata[];

static inline bool is_program_constant(const char *p)
{
    return p >= etext && p < edata;
}

const char *am_intern_cached(const char *key)
{
    enum { CACHE_SLOTS = 256 };
    static __thread struct {
        const char *ptr;
        const char *interned;
    } cache[CACHE_SLOTS];
    if (key == NULL) {
        return NULL;
    }
    if (am_interned(key)) {
        return key;
    }
    size_t slot = ((uintptr_t)key >> 3) & (CACHE_SLOTS - 1);
    /* A string literal never changes; any other address may since hold
     * another string (a config string freed on reload), so a remembered hit
     * on one is confirmed by comparing the text. */
    if (cache[slot].ptr == key) {
        if (is_program_constant(key)) {
            return cache[slot].interned;
        }
        if (cache[slot].interned != NULL && strcmp(cache[slot].interned, key) == 0) {
            return cache[slot].interned;
        }
    }
    const char *interned = am_intern(key, strlen(key));
    cache[slot].ptr = key;
    cache[slot].interned = interned;
    return interned;
}

size_t am_intern_count(void)
{
    pthread_once(&table_once, table_build);
    return ids_used;
}
