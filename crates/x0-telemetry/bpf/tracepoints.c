// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// x0tta6bl4 kernel-side network events (BTF-enabled tracepoints). Loaded by
// crates/x0-telemetry; see docs/ebpf.md.
//
//   tp_btf/kfree_skb           packets the kernel dropped, per drop reason
//   tp_btf/tcp_retransmit_skb  TCP retransmissions, per remote address
//   tp_btf/inet_sock_set_state TCP socket state transitions, per (old, new) state
//
// tp_btf programs read the tracepoint's raw arguments (not the tracefs record), so they need
// no tracefs mount and no field offsets from events/*/format: the arguments are typed by the
// kernel's BTF, and the few struct sock fields read here are relocated by CO-RE at load time.
// The map layouts are mirrored in crates/x0-telemetry/src/maps.rs; change both together.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

// SKB_NOT_DROPPED_YET and SKB_CONSUMED are not drops.
#define FIRST_DROP_REASON 2

// TCP states are 1..12 today; the table leaves room.
#define TCP_STATE_SLOTS 16

// Only the fields read below; CO-RE matches them by name against the running kernel.
struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct peer_key {
	__u8 family; // 4 or 6
	__u8 pad[3];
	__u8 addr[16]; // IPv4 in the first 4 bytes, the rest zero
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); // enum skb_drop_reason
	__type(value, __u64);
} x0_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); // the loader sets the configured size
	__type(key, struct peer_key);
	__type(value, __u64);
} x0_retrans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCP_STATE_SLOTS * TCP_STATE_SLOTS);
	__type(key, __u32); // old * 16 + new
	__type(value, __u64);
} x0_tcp_states SEC(".maps");

// Per-CPU counters that are not keyed: [0] retransmits whose peer did not fit in x0_retrans,
// [1] drop reasons that did not fit in x0_drops.
#define OVERFLOW_RETRANS 0
#define OVERFLOW_DROPS 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} x0_overflow SEC(".maps");

static __always_inline void count_overflow(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&x0_overflow, &slot);
	if (value)
		*value += 1;
}

// Adds one to a per-CPU hash counter; returns 0, or -1 when the table is full.
static __always_inline int count_in(void *map, const void *key)
{
	__u64 *value = bpf_map_lookup_elem(map, key);
	if (!value) {
		__u64 one = 1;
		if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
			return 0;
		value = bpf_map_lookup_elem(map, key); // lost a race with another CPU's insert
		if (!value)
			return -1;
	}
	*value += 1;
	return 0;
}

// TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)
SEC("tp_btf/kfree_skb")
int x0_kfree_skb(__u64 *ctx)
{
	__u32 reason = (__u32)ctx[2];
	if (reason < FIRST_DROP_REASON)
		return 0;
	if (count_in(&x0_drops, &reason) != 0)
		count_overflow(OVERFLOW_DROPS);
	return 0;
}

// TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...)
SEC("tp_btf/tcp_retransmit_skb")
int x0_tcp_retransmit(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	struct peer_key key;
	__builtin_memset(&key, 0, sizeof(key));
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET) {
		key.family = 4;
		__be32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(key.addr, &daddr, 4);
	} else if (family == AF_INET6) {
		key.family = 6;
		bpf_core_read(key.addr, sizeof(key.addr), &sk->__sk_common.skc_v6_daddr);
	}
	if (count_in(&x0_retrans, &key) != 0)
		count_overflow(OVERFLOW_RETRANS);
	return 0;
}

// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
SEC("tp_btf/inet_sock_set_state")
int x0_inet_sock_set_state(__u64 *ctx)
{
	const struct sock *sk = (const struct sock *)ctx[0];
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0; // SCTP and MPTCP use the same tracepoint
	__u32 old_state = (__u32)ctx[1];
	__u32 new_state = (__u32)ctx[2];
	if (old_state >= TCP_STATE_SLOTS || new_state >= TCP_STATE_SLOTS)
		return 0;
	__u32 slot = old_state * TCP_STATE_SLOTS + new_state;
	__u64 *value = bpf_map_lookup_elem(&x0_tcp_states, &slot);
	if (value)
		*value += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
