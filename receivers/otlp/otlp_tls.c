/*
 * otlp_tls.c - TLS for the gRPC server with OpenSSL memory BIOs, and the
 * server contexts of both transports.
 *
 * libuv owns the socket, so OpenSSL never sees a file descriptor: bytes read
 * from the socket are written into the read BIO, SSL_read yields plaintext
 * for nghttp2, and whatever SSL produces (handshake records, encrypted
 * frames) accumulates in the write BIO until the connection moves it into a
 * uv_write.  Memory BIOs never block, which keeps the whole connection on
 * the one loop thread without any WANT_WRITE dance.
 *
 * Contexts: one SSL_CTX per receiver, built from the config (certificate
 * chain and key, optional client CA for mTLS with verification required,
 * minimum version, ALPN: "h2" only for gRPC, "http/1.1" only for OTLP/HTTP).
 * SIGHUP builds a fresh context and swaps it in; connections already open
 * keep a reference to the old one (SSL_new takes it), so nothing is torn
 * down under them.  OTLP/HTTP connections run on core's am_http server,
 * which does its own memory-BIO plumbing with the context built here.
 */
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

#include "otlp_internal.h"

static void openssl_error(const char *what, char *err, size_t err_size)
{
    unsigned long code = ERR_get_error();
    char reason[256] = "unknown error";
    if (code != 0) {
        ERR_error_string_n(code, reason, sizeof(reason));
    }
    ERR_clear_error();
    snprintf(err, err_size, "%s: %s", what, reason);
}

/* ALPN: each server speaks exactly one protocol (`arg`: "h2" for gRPC,
 * "http/1.1" for OTLP/HTTP).  A client offering ALPN without it gets a
 * fatal no_application_protocol alert; one offering no ALPN at all is
 * allowed (prior knowledge over TLS). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    AM_UNUSED(ssl);
    const char *want = arg;
    size_t want_len = strlen(want);
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int len = in[i];
        if (i + 1 + len > inlen) {
            break;
        }
        if (len == want_len && memcmp(in + i + 1, want, want_len) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

SSL_CTX *am__otlp_tls_ctx_new(const am__otlp_tls_cfg_t *cfg, const char *alpn, char *err,
                              size_t err_size)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        openssl_error("SSL_CTX_new", err, err_size);
        return NULL;
    }
    int min_version = TLS1_2_VERSION;
    if (cfg->min_version != NULL && strcmp(cfg->min_version, "1.3") == 0) {
        min_version = TLS1_3_VERSION;
    } else if (cfg->min_version != NULL && cfg->min_version[0] != '\0' &&
               strcmp(cfg->min_version, "1.2") != 0) {
        snprintf(err, err_size, "min_version %s: want 1.2 or 1.3", cfg->min_version);
        goto fail;
    }
    if (SSL_CTX_set_min_proto_version(ctx, min_version) != 1) {
        openssl_error("min_version", err, err_size);
        goto fail;
    }
    /* HTTP/2 (RFC 9113 §9.2) forbids renegotiation and compression; HTTP/1.1
     * is better off without them too (CRIME, renegotiation DoS). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (cfg->cert_file == NULL || cfg->key_file == NULL) {
        snprintf(err, err_size, "cert_file and key_file are required");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "cert_file %s", cfg->cert_file);
        openssl_error(what, err, err_size);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "key_file %s", cfg->key_file);
        openssl_error(what, err, err_size);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_error("key_file does not match cert_file", err, err_size);
        goto fail;
    }
    if (cfg->client_ca_file != NULL && cfg->client_ca_file[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ctx, cfg->client_ca_file, NULL) != 1) {
            char what[600];
            snprintf(what, sizeof(what), "client_ca_file %s", cfg->client_ca_file);
            openssl_error(what, err, err_size);
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->client_ca_file);
        if (names != NULL) {
            SSL_CTX_set_client_CA_list(ctx, names);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)alpn);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int am__otlp_tls_conn_init(am__otlp_tls_conn_t *tls, SSL_CTX *ctx)
{
    memset(tls, 0, sizeof(*tls));
    tls->ssl = SSL_new(ctx);
    tls->rbio = BIO_new(BIO_s_mem());
    tls->wbio = BIO_new(BIO_s_mem());
    if (tls->ssl == NULL || tls->rbio == NULL || tls->wbio == NULL) {
        BIO_free(tls->rbio);
        BIO_free(tls->wbio);
        SSL_free(tls->ssl);
        memset(tls, 0, sizeof(*tls));
        ERR_clear_error();
        return AM_ENOMEM;
    }
    /* An empty read BIO means "retry later", not EOF. */
    BIO_set_mem_eof_return(tls->rbio, -1);
    SSL_set_bio(tls->ssl, tls->rbio, tls->wbio); /* SSL owns both BIOs now */
    SSL_set_accept_state(tls->ssl);
    return 0;
}

void am__otlp_tls_conn_free(am__otlp_tls_conn_t *tls)
{
    if (tls->ssl != NULL) {
        SSL_free(tls->ssl);
    }
    memset(tls, 0, sizeof(*tls));
}

int am__otlp_tls_feed(am__otlp_tls_conn_t *tls, const uint8_t *data, size_t len)
{
    while (len > 0) {
        int chunk = (int)AM_MIN(len, (size_t)INT32_MAX);
        int written = BIO_write(tls->rbio, data, chunk);
        if (written <= 0) {
            return AM_ENOMEM;
        }
        data += written;
        len -= (size_t)written;
    }
    return 0;
}

int am__otlp_tls_handshake(am__otlp_tls_conn_t *tls, char *err, size_t err_size)
{
    if (tls->handshake_done) {
        return 1;
    }
    int rc = SSL_do_handshake(tls->ssl);
    if (rc == 1) {
        tls->handshake_done = true;
        return 1;
    }
    int reason = SSL_get_error(tls->ssl, rc);
    if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE) {
        return 0;
    }
    openssl_error("TLS handshake failed", err, err_size);
    return -1;
}

int am__otlp_tls_read(am__otlp_tls_conn_t *tls, uint8_t *buf, size_t size)
{
    int rc = SSL_read(tls->ssl, buf, (int)AM_MIN(size, (size_t)INT32_MAX));
    if (rc > 0) {
        return rc;
    }
    int reason = SSL_get_error(tls->ssl, rc);
    if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE) {
        return 0;
    }
    ERR_clear_error();
    return -1;
}

int am__otlp_tls_write(am__otlp_tls_conn_t *tls, const uint8_t *data, size_t len)
{
    while (len > 0) {
        int rc = SSL_write(tls->ssl, data, (int)AM_MIN(len, (size_t)INT32_MAX));
        if (rc <= 0) {
            ERR_clear_error();
            return AM_EIO;
        }
        data += rc;
        len -= (size_t)rc;
    }
    return 0;
}

size_t am__otlp_tls_pending(am__otlp_tls_conn_t *tls)
{
    return BIO_ctrl_pending(tls->wbio);
}

size_t am__otlp_tls_take_output(am__otlp_tls_conn_t *tls, uint8_t *buf, size_t size)
{
    int rc = BIO_read(tls->wbio, buf, (int)AM_MIN(size, (size_t)INT32_MAX));
    return rc > 0 ? (size_t)rc : 0;
}
