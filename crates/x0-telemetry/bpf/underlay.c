// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// x0tta6bl4 underlay traffic counters. Loaded by crates/x0-telemetry; see docs/ebpf.md.
//
// Three entry points share one parser and one set of maps; the loader attaches either the TC
// pair or the XDP program to each underlay interface:
//
//   x0_tc_ingress  (tcx ingress)  frames received, per source address
//   x0_tc_egress   (tcx egress)   frames sent, per destination address
//   x0_xdp_count   (XDP)          frames received, per source address
//
// They count packets and bytes per (interface, direction, peer address, protocol class), and
// frames they cannot parse (truncated or bad headers) per interface. The first FLOW_SLOTS
// flows each CPU sees are counted in that CPU's slots (x0_flow_slots, one per-CPU array
// entry); later flows in a per-CPU hash map (x0_flows).
// None of them ever drops, redirects or modifies a frame: TC returns TC_ACT_UNSPEC (TCX_NEXT:
// on to the next program, then the stack), XDP returns XDP_PASS.
//
// The map layouts are mirrored in crates/x0-telemetry/src/maps.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Protocol classes (flow_key.class).
#define CLASS_UDP 0
#define CLASS_TCP 1
#define CLASS_ICMP 2
#define CLASS_OTHER 3

// flow_key.direction
#define DIR_INGRESS 0
#define DIR_EGRESS 1

// Per-interface counters (iface_key.counter). Every parse result other than PARSED_IP names
// one of them.
#define PARSED_IP 0xffffffff
// parse_pulled could not pull the headers in: the first parse stands.
#define PULL_FAILED 0xfffffffe
#define IFACE_NON_IP_PACKETS 0
#define IFACE_NON_IP_BYTES 1
#define IFACE_FLOW_TABLE_FULL 2
#define IFACE_TRUNCATED_ETHERNET 3
#define IFACE_TRUNCATED_IP 4
#define IFACE_BAD_IP_HEADER 5

// Most IPv6 extension headers walked before the protocol is taken as it stands.
#define MAX_IPV6_EXT_HEADERS 4

// The programs run between the stack's own work, so their code and data are mostly cold
// in the caches: what a common packet (IPv4, a flow with a slot) runs is kept short and
// straight, and the rare paths (tables, malformed frames, pulling headers) are subprograms
// of their own (__noinline), so that they take no room in its cache lines.
#define unlikely(x) __builtin_expect(!!(x), 0)

// Flows each CPU counts in its own slots rather than in the hash map.
#define FLOW_SLOTS 4

// Bytes TC makes sure are in the linear part of the skb before parsing (Ethernet, two VLAN
// tags, IPv6, four extension headers of ordinary size, TCP with options).
#define TC_PULL_LEN 256

struct flow_key {
	__u32 ifindex;
	__u8 family;    // 4 or 6
	__u8 class;     // CLASS_*
	__u8 direction; // DIR_*
	__u8 pad;
	__u8 addr[16]; // peer address; IPv4 in the first 4 bytes, the rest zero
};

struct flow_value {
	__u64 packets;
	__u64 bytes;
	__u64 malformed; // IP header fine, transport header truncated
};

// A CPU's slots. A slot is claimed by the first packet of a flow while free slots are left,
// and keeps that flow for good: on each CPU a flow is counted in a slot or in x0_flows, never
// both, so the loader adds the two up. The busy flows of a node (its few underlay peers) get
// slots, and each of their packets then costs one array lookup, which the verifier inlines,
// and one cache line, instead of a hash lookup's chain of bucket, element and per-CPU value:
// the programs run between the stack's own work, so their cache lines are mostly cold.
struct flow_slot {
	struct flow_key key; // all zero while free
	struct flow_value value;
};

struct flow_slots {
	__u32 used; // slots claimed, in order; written after the slot's key
	__u32 pad;
	struct flow_slot slot[FLOW_SLOTS];
};

struct iface_key {
	__u32 ifindex;
	__u32 counter; // IFACE_*
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); // the loader sets the configured size
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} x0_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_slots);
} x0_flow_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct iface_key);
	__type(value, __u64);
} x0_iface SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __noinline void count_iface(__u32 ifindex, __u32 counter, __u64 value)
{
	struct iface_key key = {.ifindex = ifindex, .counter = counter};
	__u64 *slot = bpf_map_lookup_elem(&x0_iface, &key);
	if (slot) {
		*slot += value;
		return;
	}
	if (bpf_map_update_elem(&x0_iface, &key, &value, BPF_NOEXIST) == 0)
		return;
	slot = bpf_map_lookup_elem(&x0_iface, &key); // lost a race with another CPU's insert
	if (slot)
		*slot += value;
}

static __always_inline int same_key(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a;
	const __u64 *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

static __always_inline void add_to(struct flow_value *value, __u64 packets, __u64 bytes,
				   __u64 malformed)
{
	value->packets += packets;
	value->bytes += bytes;
	value->malformed += malformed;
}

// A flow this CPU has no slot for: claims a free slot, or else counts it in the hash map.
static __noinline void count_new_flow(struct flow_key *key, __u64 packets, __u64 bytes,
				      __u64 malformed)
{
	__u32 zero = 0;
	struct flow_slots *slots = bpf_map_lookup_elem(&x0_flow_slots, &zero);
	if (slots) {
		__u32 used = slots->used;
		if (used < FLOW_SLOTS) {
			struct flow_slot *slot = &slots->slot[used];
			__builtin_memcpy(&slot->key, key, sizeof(*key));
			add_to(&slot->value, packets, bytes, malformed);
			// Fully ordered: the key is in place before a reader sees the slot used.
			__sync_fetch_and_add(&slots->used, 1);
			return;
		}
	}
	struct flow_value *value = bpf_map_lookup_elem(&x0_flows, key);
	if (!value) {
		struct flow_value first = {.packets = packets, .bytes = bytes, .malformed = malformed};
		if (bpf_map_update_elem(&x0_flows, key, &first, BPF_NOEXIST) == 0)
			return;
		value = bpf_map_lookup_elem(&x0_flows, key);
		if (!value) { // the table is full
			count_iface(key->ifindex, IFACE_FLOW_TABLE_FULL, packets);
			return;
		}
	}
	add_to(value, packets, bytes, malformed);
}

// Counts the packet in this CPU's slot for its flow (the common case), or hands it on.
static __always_inline void count_flow(struct flow_key *key, __u64 packets, __u64 bytes,
				       __u64 malformed)
{
	__u32 zero = 0;
	struct flow_slots *slots = bpf_map_lookup_elem(&x0_flow_slots, &zero);
	if (unlikely(!slots))
		return;
	__u32 used = slots->used;
#pragma unroll
	for (int i = 0; i < FLOW_SLOTS; i++) {
		struct flow_slot *slot = &slots->slot[i];
		if (i < used && same_key(&slot->key, key)) {
			add_to(&slot->value, packets, bytes, malformed);
			return;
		}
	}
	count_new_flow(key, packets, bytes, malformed);
}

static __always_inline __u8 class_of(__u8 proto)
{
	switch (proto) {
	case IPPROTO_UDP:
		return CLASS_UDP;
	case IPPROTO_TCP:
		return CLASS_TCP;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return CLASS_ICMP;
	default:
		return CLASS_OTHER;
	}
}

// Checks the transport header at `l4`. Returns 1 when it is shorter than its protocol's
// minimum (or, for TCP, its data offset is below 5 words), 0 otherwise and for protocols not
// checked; *len gets the header's length (TCP with options, UDP 8, others 0). One bounds check
// per case, so that the verifier sees each read covered on its own path.
static __always_inline __u64 check_transport(void *l4, void *end, __u8 proto, __u32 *len)
{
	*len = 0;
	switch (proto) {
	case IPPROTO_TCP: {
		if (unlikely(l4 + 20 > end))
			return 1;
		__u32 doff = ((__u8 *)l4)[12] >> 4;
		if (unlikely(doff < 5))
			return 1;
		*len = doff * 4;
		return 0;
	}
	case IPPROTO_UDP:
		*len = 8;
		return l4 + 8 > end;
	case IPPROTO_ICMP:
		return l4 + 8 > end;
	case IPPROTO_ICMPV6:
		return l4 + 4 > end;
	default:
		return 0;
	}
}

// Parses the frame in [data, end), `len` bytes in all (fragments included). For an IP packet
// fills key->family, class and addr (the source on ingress, the destination on egress),
// *malformed and *headers (bytes before the transport payload: what every segment of a GSO
// packet repeats) and returns PARSED_IP; otherwise returns the IFACE_* counter to bump.
static __always_inline __u32 parse_frame(void *data, void *end, __u64 len, int gso,
					 struct flow_key *key, __u64 *malformed, __u32 *headers)
{
	*malformed = 0;
	*headers = 0;
	struct ethhdr *eth = data;
	if (unlikely((void *)(eth + 1) > end))
		return IFACE_TRUNCATED_ETHERNET;
	__be16 proto = eth->h_proto;
	void *cursor = eth + 1;
	__u32 l3_offset = sizeof(*eth);

#pragma unroll
	for (int i = 0; i < 2; i++) { // 802.1Q and 802.1ad (QinQ) tags
		if (!unlikely(proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)))
			break;
		struct vlan_hdr *vlan = cursor;
		if ((void *)(vlan + 1) > end)
			return IFACE_TRUNCATED_ETHERNET;
		proto = vlan->encapsulated_proto;
		cursor = vlan + 1;
		l3_offset += sizeof(*vlan);
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cursor;
		if (unlikely((void *)(ip + 1) > end))
			return IFACE_TRUNCATED_IP;
		__u32 ihl = ip->ihl * 4;
		__u32 tot_len = bpf_ntohs(ip->tot_len);
		if (unlikely(ip->version != 4 || ihl < sizeof(*ip)))
			return IFACE_BAD_IP_HEADER;
		// A GSO packet over 64 KiB (BIG TCP) carries a total length of 0.
		if (!(gso && tot_len == 0)) {
			if (unlikely(tot_len < ihl))
				return IFACE_BAD_IP_HEADER;
			if (unlikely(l3_offset + tot_len > len))
				return IFACE_TRUNCATED_IP;
		}
		key->family = 4;
		key->class = class_of(ip->protocol);
		if (key->direction == DIR_INGRESS)
			__builtin_memcpy(key->addr, &ip->saddr, 4);
		else
			__builtin_memcpy(key->addr, &ip->daddr, 4);
		__u32 l4_len = 0;
		// Later fragments carry no transport header.
		if ((ip->frag_off & bpf_htons(0x1fff)) == 0)
			*malformed = check_transport(cursor + ihl, end, ip->protocol, &l4_len);
		*headers = l3_offset + ihl + l4_len;
		return PARSED_IP;
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;
		if ((void *)(ip6 + 1) > end)
			return IFACE_TRUNCATED_IP;
		if (ip6->version != 6)
			return IFACE_BAD_IP_HEADER;
		if (l3_offset + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > len)
			return IFACE_TRUNCATED_IP;
		__u8 nexthdr = ip6->nexthdr;
		void *l4 = ip6 + 1;
		__u32 ext_total = 0;
		int later_fragment = 0;
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
			if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
			    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT &&
			    nexthdr != IPPROTO_AH)
				break;
			struct ipv6_ext_hdr *ext = l4;
			if ((void *)ext + 4 > end)
				return IFACE_TRUNCATED_IP;
			__u32 ext_len;
			if (nexthdr == IPPROTO_FRAGMENT) {
				ext_len = 8;
				__be16 frag_off = *(__be16 *)((void *)ext + 2);
				if (frag_off & bpf_htons(0xfff8))
					later_fragment = 1;
			} else if (nexthdr == IPPROTO_AH) {
				ext_len = ((__u32)ext->hdrlen + 2) * 4;
			} else {
				ext_len = ((__u32)ext->hdrlen + 1) * 8;
			}
			nexthdr = ext->nexthdr;
			l4 = (void *)ext + ext_len;
			ext_total += ext_len;
		}
		key->family = 6;
		key->class = class_of(nexthdr);
		if (key->direction == DIR_INGRESS)
			__builtin_memcpy(key->addr, &ip6->saddr, 16);
		else
			__builtin_memcpy(key->addr, &ip6->daddr, 16);
		__u32 l4_len = 0;
		if (!later_fragment)
			*malformed = check_transport(l4, end, nexthdr, &l4_len);
		*headers = l3_offset + sizeof(*ip6) + ext_total + l4_len;
		return PARSED_IP;
	}

	return IFACE_NON_IP_PACKETS;
}

static __always_inline int likely_parsed(__u32 result)
{
	return __builtin_expect(result == PARSED_IP, 1);
}

// Counts one parsed frame (or, with segs > 1, one GSO/GRO packet of segs wire frames).
static __always_inline void record(struct flow_key *key, __u32 result, __u64 malformed,
				   __u32 headers, __u64 len, __u32 segs)
{
	if (likely_parsed(result)) {
		if (segs == 0)
			segs = 1;
		// Every segment on the wire repeats the headers.
		count_flow(key, segs, len + (__u64)(segs - 1) * headers, malformed);
		return;
	}
	count_iface(key->ifindex, result, 1);
	if (result == IFACE_NON_IP_PACKETS)
		count_iface(key->ifindex, IFACE_NON_IP_BYTES, len);
}

// The headers run on into the skb's fragments (rare: the stack keeps them linear): pulls them
// into the linear part and parses again. `key` keeps its ifindex and direction. Returns
// PULL_FAILED, with `key`, `malformed` and `headers` untouched, when the pull fails.
static __noinline __u32 parse_pulled(struct __sk_buff *skb, struct flow_key *key,
				     __u64 *malformed, __u32 *headers)
{
	__u32 len = skb->len;
	if (bpf_skb_pull_data(skb, len < TC_PULL_LEN ? len : TC_PULL_LEN) != 0)
		return PULL_FAILED;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 ifindex = key->ifindex;
	__u8 direction = key->direction;
	__builtin_memset(key, 0, sizeof(*key));
	key->ifindex = ifindex;
	key->direction = direction;
	return parse_frame(data, end, len, skb->gso_segs > 1, key, malformed, headers);
}

static __always_inline void count_skb(struct __sk_buff *skb, __u8 direction)
{
	struct flow_key key __attribute__((aligned(8)));
	__u64 malformed;
	__u32 headers;
	__u32 len = skb->len;
	__u32 segs = skb->gso_segs;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	__builtin_memset(&key, 0, sizeof(key));
	key.ifindex = skb->ifindex;
	key.direction = direction;
	__u32 result = parse_frame(data, end, len, segs > 1, &key, &malformed, &headers);
	int short_headers = result == IFACE_TRUNCATED_ETHERNET || result == IFACE_TRUNCATED_IP ||
			    (result == PARSED_IP && malformed);
	if (unlikely(short_headers && len > (__u32)(end - data))) {
		__u32 pulled = parse_pulled(skb, &key, &malformed, &headers);
		if (pulled != PULL_FAILED)
			result = pulled;
	}
	record(&key, result, malformed, headers, len, segs);
}

SEC("classifier")
int x0_tc_ingress(struct __sk_buff *skb)
{
	count_skb(skb, DIR_INGRESS);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int x0_tc_egress(struct __sk_buff *skb)
{
	count_skb(skb, DIR_EGRESS);
	return TC_ACT_UNSPEC;
}

SEC("xdp.frags")
int x0_xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	// The whole frame, all fragments (jumbo frames on veth or multi-buffer drivers).
	__u64 len = bpf_xdp_get_buff_len(ctx);
	struct flow_key key __attribute__((aligned(8)));
	__u64 malformed;
	__u32 headers;

	__builtin_memset(&key, 0, sizeof(key));
	key.ifindex = ctx->ingress_ifindex;
	key.direction = DIR_INGRESS;
	__u32 result = parse_frame(data, end, len, 0, &key, &malformed, &headers);
	record(&key, result, malformed, headers, len, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
