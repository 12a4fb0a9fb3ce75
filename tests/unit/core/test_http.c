/*
 * test_http.c - core/am_http.c bounds that a client notices: a connection
 * that stops sending in the middle of a request body is closed after the
 * idle timeout instead of holding a connection slot (and its buffered body)
 * forever.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "am_http.h"

static int handled;

static void handler(am_http_request_t *req)
{
    handled++;
    am_http_respond(req, 200, "text/plain", NULL, "ok\n", 3);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    return fd;
}

/* Run the loop until the server closes `fd` (true) or the deadline passes. */
static bool wait_closed(uv_loop_t *loop, int fd, uint64_t deadline_ms)
{
    char buf[512];
    while (am_now_mono_ms() < deadline_ms) {
        uv_run(loop, UV_RUN_NOWAIT);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 10) > 0) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) {
                return true;
            }
        }
    }
    return false;
}

static void test_stalled_body_is_closed(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    am_http_server_opts_t opts = {
        .endpoint = "127.0.0.1:0",
        .header_timeout_ms = 200,
        .idle_timeout_ms = 300,
        .handler = handler,
    };
    am_http_server_t *server = NULL;
    assert_int_equal(am_http_server_start(&loop, &opts, &server), 0);
    int fd = connect_to(am_http_server_port(server));
    static const char head[] = "POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                               "{\"resourceSpans\":";
    assert_int_equal(send(fd, head, sizeof(head) - 1, 0), (ssize_t)(sizeof(head) - 1));
    /* The client never sends the rest of its body. */
    assert_true(wait_closed(&loop, fd, am_now_mono_ms() + 3000));
    assert_int_equal(handled, 0);
    close(fd);
    am_http_server_close(server);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_slow_but_moving_body_is_served(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    am_http_server_opts_t opts = {
        .endpoint = "127.0.0.1:0",
        .header_timeout_ms = 200,
        .idle_timeout_ms = 300,
        .handler = handler,
    };
    am_http_server_t *server = NULL;
    assert_int_equal(am_http_server_start(&loop, &opts, &server), 0);
    int fd = connect_to(am_http_server_port(server));
    static const char head[] = "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n";
    assert_int_equal(send(fd, head, sizeof(head) - 1, 0), (ssize_t)(sizeof(head) - 1));
    /* One body byte every 100 ms: longer than the header timeout in total,
     * never idle for the idle timeout. */
    handled = 0;
    for (int i = 0; i < 8; i++) {
        uint64_t until = am_now_mono_ms() + 100;
        while (am_now_mono_ms() < until) {
            uv_run(&loop, UV_RUN_NOWAIT);
            poll(NULL, 0, 5);
        }
        assert_int_equal(send(fd, "x", 1, 0), 1);
    }
    uint64_t deadline = am_now_mono_ms() + 2000;
    while (handled == 0 && am_now_mono_ms() < deadline) {
        uv_run(&loop, UV_RUN_NOWAIT);
        poll(NULL, 0, 5);
    }
    assert_int_equal(handled, 1);
    close(fd);
    am_http_server_close(server);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stalled_body_is_closed),
        cmocka_unit_test(test_slow_but_moving_body_is_served),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
