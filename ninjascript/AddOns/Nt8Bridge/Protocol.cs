#region Using declarations
using System;
using System.Collections.Generic;
using System.IO;
using System.Security.Cryptography;
using System.Text;
#endregion

// nt8bridge wire protocol v1 (docs/protocol.md): the C# side of bridge/protocol/codec.py.
// Two ZeroMQ frames per message: a 32-byte header and a body; little-endian, fixed layouts,
// strings as u16 length + UTF-8. BinaryWriter/BinaryReader are little-endian on every platform,
// so no third-party library is needed. Times stay in wire units here: 100 ns since the Unix epoch
// (DateTime.Ticks - UnixEpochTicks). The same golden vectors as the Python codec are its contract
// (tests/vectors, checked by tests/integration/test_csharp_codec.py under Mono).
namespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge
{
	public enum MsgType : byte
	{
		Hello = 1, Tick = 2, Bar = 3, OrderUpdate = 4, Execution = 5, Position = 6, Account = 7,
		Heartbeat = 8, Bye = 9, Ticks = 10,
		Welcome = 16, Bracket = 17, Cancel = 18, Change = 19, Flatten = 20, Error = 21
	}

	public enum ErrorCode : ushort
	{
		ProtocolTruncated = 100, ProtocolBadMagic = 101, ProtocolUnsupportedVersion = 102,
		ProtocolUnknownType = 103, ProtocolOversize = 104, ProtocolMalformedBody = 105,
		ProtocolBadFrameCount = 106, ProtocolWrongDirection = 107,
		// remote mode (docs/security.md): the sidecar refused a message, or a control request, on authentication
		AuthRequired = 400, AuthBadMac = 401, AuthReplay = 402, AuthPeerNotAllowed = 403, AuthApproverSameKey = 404
	}

	public sealed class ProtocolException : Exception
	{
		public readonly ErrorCode Code;
		public readonly ulong Seq;

		public ProtocolException(ErrorCode code, string text, ulong seq = 0) : base(code + ": " + text)
		{
			Code = code;
			Seq = seq;
		}
	}

	public sealed class Header
	{
		public const int Size = 32;
		public static readonly byte[] Magic = { (byte)'N', (byte)'T', (byte)'8', (byte)'B' };
		public const byte Version = 1;
		public MsgType Type;
		public ushort Flags; // bit 0 (Auth.FlagAuth): an HMAC trailer frame follows the body
		public ulong Seq;
		public long TsSend;  // 100 ns since the Unix epoch
		public long TsEcho;  // in a reply: TsSend of the message that caused it
	}

	/// <summary>Time conversions between DateTime and the wire's 100 ns since the Unix epoch.</summary>
	public static class WireTime
	{
		public const long UnixEpochTicks = 621355968000000000L;

		public static long FromDateTime(DateTime utc) { return utc.Ticks - UnixEpochTicks; }

		public static DateTime ToDateTime(long wire) { return new DateTime(wire + UnixEpochTicks, DateTimeKind.Utc); }

		public static long Now() { return DateTime.UtcNow.Ticks - UnixEpochTicks; }
	}

	/// <summary>Reads a body; every shortfall is PROTOCOL_TRUNCATED, every bad value PROTOCOL_MALFORMED_BODY.</summary>
	public sealed class BodyReader
	{
		private static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);
		private readonly byte[] buf;
		private int pos;

		public BodyReader(byte[] body) { buf = body; }

		private int Take(int n)
		{
			if (pos + n > buf.Length)
				throw new ProtocolException(ErrorCode.ProtocolTruncated, "body of " + buf.Length + " bytes is too short");
			int at = pos;
			pos += n;
			return at;
		}

		public byte U8() { return buf[Take(1)]; }
		public ushort U16() { return BitConverter.ToUInt16(buf, Take(2)); }
		public int I32() { return BitConverter.ToInt32(buf, Take(4)); }
		public uint U32() { return BitConverter.ToUInt32(buf, Take(4)); }
		public long I64() { return BitConverter.ToInt64(buf, Take(8)); }
		public ulong U64() { return BitConverter.ToUInt64(buf, Take(8)); }
		public double F64() { return BitConverter.ToDouble(buf, Take(8)); }

		public long Time()
		{
			long t = I64();
			if (t < -Codec.MaxWireTime || t > Codec.MaxWireTime)
				throw new ProtocolException(ErrorCode.ProtocolMalformedBody, "a time outside the representable range");
			return t;
		}

		public string Str()
		{
			int n = U16();
			int at = Take(n);
			try { return StrictUtf8.GetString(buf, at, n); }
			catch (ArgumentException) { throw new ProtocolException(ErrorCode.ProtocolMalformedBody, "string is not valid UTF-8"); }
		}

		public byte Enum(byte max, string name) { return EnumRange(0, max, name); }

		public byte EnumRange(byte min, byte max, string name)
		{
			byte v = U8();
			if (v < min || v > max)
				throw new ProtocolException(ErrorCode.ProtocolMalformedBody, name + " = " + v + " is out of range");
			return v;
		}

		public void End()
		{
			if (pos != buf.Length)
				throw new ProtocolException(ErrorCode.ProtocolMalformedBody, "body has " + (buf.Length - pos) + " trailing bytes");
		}
	}

	/// <summary>Writes a body; NaN is written as the quiet NaN 0x7FF8000000000000 the spec asks for.</summary>
	public sealed class BodyWriter
	{
		private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
		private const long CanonicalNaN = 0x7FF8000000000000L;
		private readonly MemoryStream ms = new MemoryStream(64);
		private readonly BinaryWriter w;

		public BodyWriter() { w = new BinaryWriter(ms); }

		public void U8(byte v) { w.Write(v); }
		public void U16(ushort v) { w.Write(v); }
		public void I32(int v) { w.Write(v); }
		public void U32(uint v) { w.Write(v); }
		public void I64(long v) { w.Write(v); }
		public void U64(ulong v) { w.Write(v); }

		public void F64(double v)
		{
			// a NaN that came off the wire keeps its bits; one made in .NET (0xFFF8...) is made canonical
			long bits = BitConverter.DoubleToInt64Bits(v);
			if (double.IsNaN(v) && bits == BitConverter.DoubleToInt64Bits(double.NaN))
				bits = CanonicalNaN;
			w.Write(bits);
		}

		public void Str(string s)
		{
			byte[] b = Utf8.GetBytes(s ?? string.Empty);
			if (b.Length > ushort.MaxValue)
				throw new ArgumentException("string of " + b.Length + " UTF-8 bytes; at most 65535");
			w.Write((ushort)b.Length);
			w.Write(b);
		}

		public byte[] ToArray() { w.Flush(); return ms.ToArray(); }
	}

	public abstract class Message
	{
		public abstract MsgType Type { get; }
		public abstract void Write(BodyWriter w);

		/// <summary>Wire field names and values (times in nanoseconds), for logs and the golden-vector test.</summary>
		public abstract IList<KeyValuePair<string, object>> Fields();

		protected static KeyValuePair<string, object> F(string name, object value) { return new KeyValuePair<string, object>(name, value); }
	}

	public sealed class InstrumentDecl
	{
		public string Name;
		public double TickSize;
		public double PointValue;
	}

	public sealed class Hello : Message
	{
		public string InstanceId; public string Account; public uint Flags; public uint HeartbeatMs;
		public long Nt8Clock; public string Nt8Version;
		public List<InstrumentDecl> Instruments = new List<InstrumentDecl>();
		public override MsgType Type { get { return MsgType.Hello; } }

		public override void Write(BodyWriter w)
		{
			w.Str(InstanceId); w.Str(Account); w.U32(Flags); w.U32(HeartbeatMs); w.I64(Nt8Clock); w.Str(Nt8Version);
			w.U16((ushort)Instruments.Count);
			foreach (InstrumentDecl d in Instruments) { w.Str(d.Name); w.F64(d.TickSize); w.F64(d.PointValue); }
		}

		public static Hello Read(BodyReader r)
		{
			Hello m = new Hello { InstanceId = r.Str(), Account = r.Str(), Flags = r.U32(), HeartbeatMs = r.U32(),
				Nt8Clock = r.Time(), Nt8Version = r.Str() };
			int n = r.U16();
			for (int i = 0; i < n; i++)
				m.Instruments.Add(new InstrumentDecl { Name = r.Str(), TickSize = r.F64(), PointValue = r.F64() });
			return m;
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			List<object> decls = new List<object>();
			foreach (InstrumentDecl d in Instruments)
				decls.Add(new List<KeyValuePair<string, object>> { F("name", d.Name), F("tick_size", d.TickSize), F("point_value", d.PointValue) });
			return new List<KeyValuePair<string, object>> { F("instance_id", InstanceId), F("account", Account), F("flags", Flags),
				F("heartbeat_ms", HeartbeatMs), F("nt8_clock_ns", Nt8Clock * 100), F("nt8_version", Nt8Version), F("instruments", decls) };
		}
	}

	public sealed class Tick : Message
	{
		public const int Size = 51;
		public ushort InstrumentId; public byte Kind; public double Price; public long Volume; public double Bid; public double Ask;
		public long TsExchange; public long TsReceive;
		public override MsgType Type { get { return MsgType.Tick; } }

		public override void Write(BodyWriter w)
		{
			w.U16(InstrumentId); w.U8(Kind); w.F64(Price); w.I64(Volume); w.F64(Bid); w.F64(Ask); w.I64(TsExchange); w.I64(TsReceive);
		}

		public static Tick Read(BodyReader r)
		{
			return new Tick { InstrumentId = r.U16(), Kind = r.Enum(2, "kind"), Price = r.F64(), Volume = r.I64(), Bid = r.F64(),
				Ask = r.F64(), TsExchange = r.Time(), TsReceive = r.Time() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("instrument_id", InstrumentId), F("kind", Kind), F("price", Price),
				F("size", Volume), F("bid", Bid), F("ask", Ask), F("ts_exchange_ns", TsExchange * 100), F("ts_receive_ns", TsReceive * 100) };
		}
	}

	public sealed class TickBatch : Message
	{
		public List<Tick> Ticks = new List<Tick>();
		public override MsgType Type { get { return MsgType.Ticks; } }

		public override void Write(BodyWriter w)
		{
			w.U16((ushort)Ticks.Count);
			foreach (Tick t in Ticks) t.Write(w);
		}

		public static TickBatch Read(BodyReader r)
		{
			TickBatch m = new TickBatch();
			int n = r.U16();
			for (int i = 0; i < n; i++) m.Ticks.Add(Tick.Read(r));
			return m;
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			List<object> ticks = new List<object>();
			foreach (Tick t in Ticks) ticks.Add(t.Fields());
			return new List<KeyValuePair<string, object>> { F("ticks", ticks) };
		}
	}

	public sealed class Bar : Message
	{
		public ushort InstrumentId; public uint PeriodS; public double Open; public double High; public double Low; public double Close;
		public long Volume; public long TsClose;
		public override MsgType Type { get { return MsgType.Bar; } }

		public override void Write(BodyWriter w)
		{
			w.U16(InstrumentId); w.U32(PeriodS); w.F64(Open); w.F64(High); w.F64(Low); w.F64(Close); w.I64(Volume); w.I64(TsClose);
		}

		public static Bar Read(BodyReader r)
		{
			return new Bar { InstrumentId = r.U16(), PeriodS = r.U32(), Open = r.F64(), High = r.F64(), Low = r.F64(), Close = r.F64(),
				Volume = r.I64(), TsClose = r.Time() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("instrument_id", InstrumentId), F("period_s", PeriodS), F("open", Open),
				F("high", High), F("low", Low), F("close", Close), F("volume", Volume), F("ts_close_ns", TsClose * 100) };
		}
	}

	public sealed class OrderUpdate : Message
	{
		public string ClientOrderId; public byte Role; public string Nt8OrderId; public ushort InstrumentId; public byte State;
		public byte OrderType; public byte Side; public int Quantity; public int Filled; public double LimitPrice; public double StopPrice;
		public double AvgFillPrice; public long TsEvent; public ushort ErrorCode; public string Comment;
		public override MsgType Type { get { return MsgType.OrderUpdate; } }

		public override void Write(BodyWriter w)
		{
			w.Str(ClientOrderId); w.U8(Role); w.Str(Nt8OrderId); w.U16(InstrumentId); w.U8(State); w.U8(OrderType); w.U8(Side);
			w.I32(Quantity); w.I32(Filled); w.F64(LimitPrice); w.F64(StopPrice); w.F64(AvgFillPrice); w.I64(TsEvent);
			w.U16(ErrorCode); w.Str(Comment);
		}

		public static OrderUpdate Read(BodyReader r)
		{
			return new OrderUpdate { ClientOrderId = r.Str(), Role = r.Enum(4, "role"), Nt8OrderId = r.Str(), InstrumentId = r.U16(),
				State = r.Enum(13, "state"), OrderType = r.Enum(4, "order_type"), Side = r.EnumRange(1, 2, "side"), Quantity = r.I32(),
				Filled = r.I32(), LimitPrice = r.F64(), StopPrice = r.F64(), AvgFillPrice = r.F64(), TsEvent = r.Time(),
				ErrorCode = r.U16(), Comment = r.Str() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("client_order_id", ClientOrderId), F("role", Role),
				F("nt8_order_id", Nt8OrderId), F("instrument_id", InstrumentId), F("state", State), F("order_type", OrderType),
				F("side", Side), F("quantity", Quantity), F("filled", Filled), F("limit_price", LimitPrice), F("stop_price", StopPrice),
				F("avg_fill_price", AvgFillPrice), F("ts_event_ns", TsEvent * 100), F("error_code", ErrorCode), F("comment", Comment) };
		}
	}

	public sealed class Execution : Message
	{
		public string ExecutionId; public string ClientOrderId; public byte Role; public string Nt8OrderId; public ushort InstrumentId;
		public byte Side; public double Price; public int Quantity; public double Commission; public long TsEvent;
		public override MsgType Type { get { return MsgType.Execution; } }

		public override void Write(BodyWriter w)
		{
			w.Str(ExecutionId); w.Str(ClientOrderId); w.U8(Role); w.Str(Nt8OrderId); w.U16(InstrumentId); w.U8(Side); w.F64(Price);
			w.I32(Quantity); w.F64(Commission); w.I64(TsEvent);
		}

		public static Execution Read(BodyReader r)
		{
			return new Execution { ExecutionId = r.Str(), ClientOrderId = r.Str(), Role = r.Enum(4, "role"), Nt8OrderId = r.Str(),
				InstrumentId = r.U16(), Side = r.EnumRange(1, 2, "side"), Price = r.F64(), Quantity = r.I32(), Commission = r.F64(),
				TsEvent = r.Time() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("execution_id", ExecutionId), F("client_order_id", ClientOrderId),
				F("role", Role), F("nt8_order_id", Nt8OrderId), F("instrument_id", InstrumentId), F("side", Side), F("price", Price),
				F("quantity", Quantity), F("commission", Commission), F("ts_event_ns", TsEvent * 100) };
		}
	}

	public sealed class Position : Message
	{
		public ushort InstrumentId; public byte MarketPosition; public int Quantity; public double AvgPrice; public long TsEvent;
		public override MsgType Type { get { return MsgType.Position; } }

		public override void Write(BodyWriter w) { w.U16(InstrumentId); w.U8(MarketPosition); w.I32(Quantity); w.F64(AvgPrice); w.I64(TsEvent); }

		public static Position Read(BodyReader r)
		{
			return new Position { InstrumentId = r.U16(), MarketPosition = r.Enum(2, "market_position"), Quantity = r.I32(),
				AvgPrice = r.F64(), TsEvent = r.Time() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("instrument_id", InstrumentId), F("market_position", MarketPosition),
				F("quantity", Quantity), F("avg_price", AvgPrice), F("ts_event_ns", TsEvent * 100) };
		}
	}

	public sealed class Account : Message
	{
		public string Name; public double CashValue; public double RealizedPnl; public double UnrealizedPnl; public double BuyingPower;
		public long TsEvent;
		public override MsgType Type { get { return MsgType.Account; } }

		public override void Write(BodyWriter w)
		{
			w.Str(Name); w.F64(CashValue); w.F64(RealizedPnl); w.F64(UnrealizedPnl); w.F64(BuyingPower); w.I64(TsEvent);
		}

		public static Account Read(BodyReader r)
		{
			return new Account { Name = r.Str(), CashValue = r.F64(), RealizedPnl = r.F64(), UnrealizedPnl = r.F64(),
				BuyingPower = r.F64(), TsEvent = r.Time() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("account", Name), F("cash_value", CashValue), F("realized_pnl", RealizedPnl),
				F("unrealized_pnl", UnrealizedPnl), F("buying_power", BuyingPower), F("ts_event_ns", TsEvent * 100) };
		}
	}

	public sealed class Heartbeat : Message
	{
		public ulong AckSeq;
		public override MsgType Type { get { return MsgType.Heartbeat; } }
		public override void Write(BodyWriter w) { w.U64(AckSeq); }
		public static Heartbeat Read(BodyReader r) { return new Heartbeat { AckSeq = r.U64() }; }
		public override IList<KeyValuePair<string, object>> Fields() { return new List<KeyValuePair<string, object>> { F("ack_seq", AckSeq) }; }
	}

	public sealed class Bye : Message
	{
		public string Reason;
		public override MsgType Type { get { return MsgType.Bye; } }
		public override void Write(BodyWriter w) { w.Str(Reason); }
		public static Bye Read(BodyReader r) { return new Bye { Reason = r.Str() }; }
		public override IList<KeyValuePair<string, object>> Fields() { return new List<KeyValuePair<string, object>> { F("reason", Reason) }; }
	}

	public sealed class Welcome : Message
	{
		public ulong SessionId; public string SidecarVersion; public uint HeartbeatMs; public uint HeartbeatTimeoutMs;
		public long SidecarClock; public uint MaxMessageBytes;
		public override MsgType Type { get { return MsgType.Welcome; } }

		public override void Write(BodyWriter w)
		{
			w.U64(SessionId); w.Str(SidecarVersion); w.U32(HeartbeatMs); w.U32(HeartbeatTimeoutMs); w.I64(SidecarClock); w.U32(MaxMessageBytes);
		}

		public static Welcome Read(BodyReader r)
		{
			return new Welcome { SessionId = r.U64(), SidecarVersion = r.Str(), HeartbeatMs = r.U32(), HeartbeatTimeoutMs = r.U32(),
				SidecarClock = r.Time(), MaxMessageBytes = r.U32() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("session_id", SessionId), F("sidecar_version", SidecarVersion),
				F("heartbeat_ms", HeartbeatMs), F("heartbeat_timeout_ms", HeartbeatTimeoutMs), F("sidecar_clock_ns", SidecarClock * 100),
				F("max_message_bytes", MaxMessageBytes) };
		}
	}

	/// <summary>BRACKET: an entry with a protective stop and a profit target, linked by OCO on the NT8 side.</summary>
	public sealed class SubmitBracket : Message
	{
		public string ClientOrderId; public ushort InstrumentId; public byte Side; public int Quantity; public byte EntryType;
		public double EntryPrice; public double StopPrice; public double TargetPrice; public byte TimeInForce; public string AlgorithmId;
		public string DecisionId;
		public override MsgType Type { get { return MsgType.Bracket; } }

		public override void Write(BodyWriter w)
		{
			w.Str(ClientOrderId); w.U16(InstrumentId); w.U8(Side); w.I32(Quantity); w.U8(EntryType); w.F64(EntryPrice); w.F64(StopPrice);
			w.F64(TargetPrice); w.U8(TimeInForce); w.Str(AlgorithmId); w.Str(DecisionId);
		}

		public static SubmitBracket Read(BodyReader r)
		{
			return new SubmitBracket { ClientOrderId = r.Str(), InstrumentId = r.U16(), Side = r.EnumRange(1, 2, "side"), Quantity = r.I32(),
				EntryType = r.EnumRange(1, 3, "entry_type"), EntryPrice = r.F64(), StopPrice = r.F64(), TargetPrice = r.F64(),
				TimeInForce = r.EnumRange(1, 2, "time_in_force"), AlgorithmId = r.Str(), DecisionId = r.Str() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("client_order_id", ClientOrderId), F("instrument_id", InstrumentId),
				F("side", Side), F("quantity", Quantity), F("entry_type", EntryType), F("entry_price", EntryPrice), F("stop_price", StopPrice),
				F("target_price", TargetPrice), F("time_in_force", TimeInForce), F("algorithm_id", AlgorithmId), F("decision_id", DecisionId) };
		}
	}

	public sealed class CancelOrder : Message
	{
		public string ClientOrderId; public string Reason;
		public override MsgType Type { get { return MsgType.Cancel; } }
		public override void Write(BodyWriter w) { w.Str(ClientOrderId); w.Str(Reason); }
		public static CancelOrder Read(BodyReader r) { return new CancelOrder { ClientOrderId = r.Str(), Reason = r.Str() }; }

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("client_order_id", ClientOrderId), F("reason", Reason) };
		}
	}

	public sealed class ChangeOrder : Message
	{
		public string ClientOrderId; public byte Role; public int Quantity; public double LimitPrice; public double StopPrice;
		public override MsgType Type { get { return MsgType.Change; } }
		public override void Write(BodyWriter w) { w.Str(ClientOrderId); w.U8(Role); w.I32(Quantity); w.F64(LimitPrice); w.F64(StopPrice); }

		public static ChangeOrder Read(BodyReader r)
		{
			return new ChangeOrder { ClientOrderId = r.Str(), Role = r.Enum(4, "role"), Quantity = r.I32(), LimitPrice = r.F64(), StopPrice = r.F64() };
		}

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("client_order_id", ClientOrderId), F("role", Role), F("quantity", Quantity),
				F("limit_price", LimitPrice), F("stop_price", StopPrice) };
		}
	}

	public sealed class Flatten : Message
	{
		public const ushort AllInstruments = 0xFFFF;
		public ushort InstrumentId; public string Reason;
		public override MsgType Type { get { return MsgType.Flatten; } }
		public override void Write(BodyWriter w) { w.U16(InstrumentId); w.Str(Reason); }
		public static Flatten Read(BodyReader r) { return new Flatten { InstrumentId = r.U16(), Reason = r.Str() }; }

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("instrument_id", InstrumentId), F("reason", Reason) };
		}
	}

	public sealed class Error : Message
	{
		public ushort Code; public ulong OffendingSeq; public byte OffendingType; public string Text;
		public override MsgType Type { get { return MsgType.Error; } }
		public override void Write(BodyWriter w) { w.U16(Code); w.U64(OffendingSeq); w.U8(OffendingType); w.Str(Text); }
		public static Error Read(BodyReader r) { return new Error { Code = r.U16(), OffendingSeq = r.U64(), OffendingType = r.U8(), Text = r.Str() }; }

		public override IList<KeyValuePair<string, object>> Fields()
		{
			return new List<KeyValuePair<string, object>> { F("code", Code), F("offending_seq", OffendingSeq), F("offending_type", OffendingType),
				F("text", Text) };
		}
	}

	public static class Codec
	{
		public const long MaxWireTime = long.MaxValue / 100;  // times must fit int64 nanoseconds on the sidecar
		public const ulong MaxSeq = long.MaxValue;             // sequence numbers are stored in signed 64-bit columns

		public static byte[] EncodeHeader(MsgType type, ulong seq, long tsSend, long tsEcho)
		{
			return EncodeHeader(type, seq, tsSend, tsEcho, 0);
		}

		public static byte[] EncodeHeader(MsgType type, ulong seq, long tsSend, long tsEcho, ushort flags)
		{
			byte[] h = new byte[Header.Size];
			Buffer.BlockCopy(Header.Magic, 0, h, 0, 4);
			h[4] = Header.Version;
			h[5] = (byte)type;
			h[6] = (byte)flags;  // bytes 6..7: flags, little-endian; 0 unless authenticated (remote mode)
			h[7] = (byte)(flags >> 8);
			Buffer.BlockCopy(BitConverter.GetBytes(seq), 0, h, 8, 8);
			Buffer.BlockCopy(BitConverter.GetBytes(tsSend), 0, h, 16, 8);
			Buffer.BlockCopy(BitConverter.GetBytes(tsEcho), 0, h, 24, 8);
			return h;
		}

		/// <summary>The two frames [header, body] of a message.</summary>
		public static byte[][] Encode(Message m, ulong seq, long tsSend, long tsEcho = 0)
		{
			return Encode(m, seq, tsSend, tsEcho, 0);
		}

		public static byte[][] Encode(Message m, ulong seq, long tsSend, long tsEcho, ushort flags)
		{
			BodyWriter w = new BodyWriter();
			m.Write(w);
			return new[] { EncodeHeader(m.Type, seq, tsSend, tsEcho, flags), w.ToArray() };
		}

		public static Header DecodeHeader(byte[] h)
		{
			if (h == null || h.Length < Header.Size)
				throw new ProtocolException(ErrorCode.ProtocolTruncated, "header shorter than 32 bytes");
			if (h.Length > Header.Size)
				throw new ProtocolException(ErrorCode.ProtocolMalformedBody, "header longer than 32 bytes");
			for (int i = 0; i < 4; i++)
				if (h[i] != Header.Magic[i])
					throw new ProtocolException(ErrorCode.ProtocolBadMagic, "the header does not start with NT8B");
			ulong seq = BitConverter.ToUInt64(h, 8);
			if (h[4] != Header.Version)
				throw new ProtocolException(ErrorCode.ProtocolUnsupportedVersion, "protocol version " + h[4], seq);
			if (!System.Enum.IsDefined(typeof(MsgType), h[5]))
				throw new ProtocolException(ErrorCode.ProtocolUnknownType, "unknown message type " + h[5], seq);
			Header header = new Header { Type = (MsgType)h[5], Flags = BitConverter.ToUInt16(h, 6), Seq = seq, TsSend = BitConverter.ToInt64(h, 16), TsEcho = BitConverter.ToInt64(h, 24) };
			if (seq > MaxSeq || Math.Abs(header.TsSend) > MaxWireTime || Math.Abs(header.TsEcho) > MaxWireTime)
				throw new ProtocolException(ErrorCode.ProtocolMalformedBody, "header out of range", 0);
			return header;
		}

		public static Message DecodeBody(MsgType type, byte[] body, ulong seq = 0)
		{
			BodyReader r = new BodyReader(body);
			Message m;
			try
			{
				switch (type)
				{
					case MsgType.Hello: m = Hello.Read(r); break;
					case MsgType.Tick: m = Tick.Read(r); break;
					case MsgType.Ticks: m = TickBatch.Read(r); break;
					case MsgType.Bar: m = Bar.Read(r); break;
					case MsgType.OrderUpdate: m = OrderUpdate.Read(r); break;
					case MsgType.Execution: m = Execution.Read(r); break;
					case MsgType.Position: m = Position.Read(r); break;
					case MsgType.Account: m = Account.Read(r); break;
					case MsgType.Heartbeat: m = Heartbeat.Read(r); break;
					case MsgType.Bye: m = Bye.Read(r); break;
					case MsgType.Welcome: m = Welcome.Read(r); break;
					case MsgType.Bracket: m = SubmitBracket.Read(r); break;
					case MsgType.Cancel: m = CancelOrder.Read(r); break;
					case MsgType.Change: m = ChangeOrder.Read(r); break;
					case MsgType.Flatten: m = Flatten.Read(r); break;
					case MsgType.Error: m = Error.Read(r); break;
					default: throw new ProtocolException(ErrorCode.ProtocolUnknownType, "unknown message type " + (byte)type, seq);
				}
				r.End();
			}
			catch (ProtocolException e)
			{
				throw new ProtocolException(e.Code, type + ": " + e.Message, seq);
			}
			return m;
		}

		public static Message Decode(byte[][] frames, out Header header)
		{
			if (frames == null || frames.Length != 2)
				throw new ProtocolException(ErrorCode.ProtocolBadFrameCount, "expected 2 frames (header, body)"
					+ (frames != null && frames.Length == 3 ? "; a third frame is an HMAC trailer (remote mode): give both sides the same shared secret, or neither" : ""));
			header = DecodeHeader(frames[0]);
			return DecodeBody(header.Type, frames[1], header.Seq);
		}
	}

	/// <summary>Remote mode on the wire (docs/protocol.md "Remote mode"; the Python side is bridge/protocol/auth.py):
	/// an authenticated message sets header flag FlagAuth and carries a third frame, its HMAC-SHA256 trailer. HELLO:
	/// client nonce + HMAC(secret, header|body|nonce); WELCOME: server nonce + HMAC(k_sidecar, header|body|nonce);
	/// anything else: HMAC(k, header|body), k_nt8 from NT8 and k_sidecar from the sidecar, both derived from the secret
	/// and the two nonces. Two keys, because HEARTBEAT travels both ways and must not verify when reflected.
	/// Only .NET Framework's own HMACSHA256 and RandomNumberGenerator: no third-party library.</summary>
	public static class Auth
	{
		public const ushort FlagAuth = 0x0001;
		public const int NonceBytes = 16;
		public const int MacBytes = 32;
		public const int HandshakeTrailerBytes = NonceBytes + MacBytes;
		public const int MinSecretBytes = 16;
		private static readonly byte[] LabelNt8 = Encoding.ASCII.GetBytes("nt8bridge nt8->sidecar v1");
		private static readonly byte[] LabelSidecar = Encoding.ASCII.GetBytes("nt8bridge sidecar->nt8 v1");
		private static readonly RandomNumberGenerator Rng = RandomNumberGenerator.Create();  // GetBytes is thread-safe

		public static byte[] Concat(params byte[][] parts)
		{
			int n = 0;
			foreach (byte[] p in parts)
				n += p.Length;
			byte[] all = new byte[n];
			int at = 0;
			foreach (byte[] p in parts)
			{
				Buffer.BlockCopy(p, 0, all, at, p.Length);
				at += p.Length;
			}
			return all;
		}

		public static byte[] Mac(byte[] key, params byte[][] parts)
		{
			using (HMACSHA256 h = new HMACSHA256(key))
				return h.ComputeHash(Concat(parts));
		}

		public static byte[] NewNonce()
		{
			byte[] nonce = new byte[NonceBytes];
			Rng.GetBytes(nonce);
			return nonce;
		}

		/// <summary>The keys of NT8's messages (k_nt8) and of the sidecar's (k_sidecar) in one session.</summary>
		public static void SessionKeys(byte[] secret, byte[] clientNonce, byte[] serverNonce, out byte[] nt8Key, out byte[] sidecarKey)
		{
			nt8Key = Mac(secret, LabelNt8, clientNonce, serverNonce);
			sidecarKey = Mac(secret, LabelSidecar, clientNonce, serverNonce);
		}

		/// <summary>HELLO's trailer: the client nonce, then HMAC(secret, header | body | nonce).</summary>
		public static byte[] HelloTrailer(byte[] secret, byte[] header, byte[] body, byte[] clientNonce)
		{
			return Concat(clientNonce, Mac(secret, header, body, clientNonce));
		}

		/// <summary>Equal contents, in a time that does not depend on where they differ (.NET Framework has no
		/// CryptographicOperations.FixedTimeEquals).</summary>
		public static bool FixedTimeEquals(byte[] a, int aOffset, byte[] b, int bOffset, int count)
		{
			if (a == null || b == null || aOffset + count > a.Length || bOffset + count > b.Length)
				return false;
			int diff = 0;
			for (int i = 0; i < count; i++)
				diff |= a[aOffset + i] ^ b[bOffset + i];
			return diff == 0;
		}

		/// <summary>A secret as a secret file holds it: hex digits, at least MinSecretBytes bytes. The message of the
		/// FormatException never quotes the text.</summary>
		public static byte[] ParseSecret(string text)
		{
			string hex = (text ?? "").Trim();
			if (hex.Length % 2 != 0)
				throw new FormatException("not hexadecimal digits (an odd count)");
			byte[] secret = new byte[hex.Length / 2];
			for (int i = 0; i < secret.Length; i++)
			{
				int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
				if (hi < 0 || lo < 0)
					throw new FormatException("not hexadecimal digits");
				secret[i] = (byte)(hi * 16 + lo);
			}
			if (secret.Length < MinSecretBytes)
				throw new FormatException(secret.Length + " bytes; a secret needs at least " + MinSecretBytes + " (32 hex digits)");
			return secret;
		}

		private static int HexDigit(char c)
		{
			if (c >= '0' && c <= '9') return c - '0';
			if (c >= 'a' && c <= 'f') return c - 'a' + 10;
			if (c >= 'A' && c <= 'F') return c - 'A' + 10;
			return -1;
		}

		/// <summary>The secret a secret file (nt8bridge secret new FILE) holds for NT8 to use: its first line that is not
		/// blank or a # comment (the sidecar also accepts the lines below it while a secret is rotated). Throws
		/// LinkException saying what to do; the message never quotes the file's content.</summary>
		public static byte[] ReadSecretFile(string path)
		{
			string[] lines;
			try
			{
				lines = File.ReadAllLines(path);
			}
			catch (Exception e)
			{
				throw new LinkException("cannot read the shared secret file " + path + ": " + e.Message
					+ "; copy the sidecar's secret file (nt8bridge secret new FILE) to this machine, or clear 'Shared secret file' for a sidecar on loopback");
			}
			for (int i = 0; i < lines.Length; i++)
			{
				string line = lines[i].Trim();
				if (line.Length == 0 || line.StartsWith("#", StringComparison.Ordinal))
					continue;
				try
				{
					return ParseSecret(line);
				}
				catch (FormatException e)
				{
					throw new LinkException(path + " line " + (i + 1) + " is not a usable secret (" + e.Message + "); copy the sidecar's secret file again");
				}
			}
			throw new LinkException(path + " holds no secret; copy the sidecar's secret file (nt8bridge secret new FILE) to this machine");
		}
	}

	/// <summary>NT8's side of one authenticated connection: seals what NT8 sends, verifies what the sidecar sends.
	/// Sealing and verifying each use an HMACSHA256 of their own, so that a writer thread and a reader thread never
	/// share one (an HMAC object is not thread-safe).</summary>
	public sealed class SessionAuth
	{
		private readonly byte[] secret;
		private volatile byte[] clientNonce;
		private volatile HMACSHA256 sendMac;
		private HMACSHA256 recvMac;
		private ulong lastSeqIn;

		public SessionAuth(byte[] secret)
		{
			if (secret == null || secret.Length < Auth.MinSecretBytes)
				throw new ArgumentException("a shared secret needs at least " + Auth.MinSecretBytes + " bytes");
			this.secret = (byte[])secret.Clone();
		}

		/// <summary>True once an authentic WELCOME has given this connection its keys.</summary>
		public bool Established { get { return sendMac != null; } }

		/// <summary>[header, body, trailer] of a HELLO with a fresh client nonce.</summary>
		public byte[][] SealHello(Hello hello, ulong seq, long tsSend)
		{
			return SealHello(hello, seq, tsSend, Auth.NewNonce());
		}

		public byte[][] SealHello(Hello hello, ulong seq, long tsSend, byte[] nonce)
		{
			byte[][] f = Codec.Encode(hello, seq, tsSend, 0, Auth.FlagAuth);
			clientNonce = (byte[])nonce.Clone();
			return new[] { f[0], f[1], Auth.HelloTrailer(secret, f[0], f[1], nonce) };
		}

		/// <summary>Verifies the sidecar's WELCOME ([header, body, trailer]) and derives the session's keys; false when it
		/// does not verify (another secret, or an answer to another HELLO).</summary>
		public bool OpenWelcome(byte[][] frames)
		{
			byte[] nonce = clientNonce;
			if (nonce == null || sendMac != null || frames == null || frames.Length != 3 || frames[2].Length != Auth.HandshakeTrailerBytes)
				return false;
			byte[] serverNonce = new byte[Auth.NonceBytes];
			Buffer.BlockCopy(frames[2], 0, serverNonce, 0, Auth.NonceBytes);
			byte[] nt8Key, sidecarKey;
			Auth.SessionKeys(secret, nonce, serverNonce, out nt8Key, out sidecarKey);
			byte[] expected = Auth.Mac(sidecarKey, frames[0], frames[1], serverNonce);
			if (!Auth.FixedTimeEquals(expected, 0, frames[2], Auth.NonceBytes, Auth.MacBytes))
				return false;
			recvMac = new HMACSHA256(sidecarKey);
			lastSeqIn = BitConverter.ToUInt64(frames[0], 8);
			sendMac = new HMACSHA256(nt8Key);  // last: Established says the keys are complete
			return true;
		}

		/// <summary>[header, body, trailer] of a message of the session (after WELCOME).</summary>
		public byte[][] Seal(Message m, ulong seq, long tsSend, long tsEcho = 0)
		{
			HMACSHA256 mac = sendMac;
			if (mac == null)
				throw new InvalidOperationException("no session key before an authentic WELCOME");
			byte[][] f = Codec.Encode(m, seq, tsSend, tsEcho, Auth.FlagAuth);
			return new[] { f[0], f[1], mac.ComputeHash(Auth.Concat(f[0], f[1])) };
		}

		/// <summary>Null when a message of the session ([header, body, trailer]) is authentic and new; else why not. The
		/// MAC covers the header, so its seq: a seq not above the last one is a replay.</summary>
		public string Check(byte[][] frames, ulong seq)
		{
			HMACSHA256 mac = recvMac;
			if (mac == null)
				return "before an authentic WELCOME";
			if (frames.Length != 3 || frames[2].Length != Auth.MacBytes)
				return "without a proper HMAC trailer";
			byte[] expected = mac.ComputeHash(Auth.Concat(frames[0], frames[1]));
			if (!Auth.FixedTimeEquals(expected, 0, frames[2], 0, Auth.MacBytes))
				return "with an HMAC that does not verify";
			if (seq <= lastSeqIn)
				return "replayed (seq " + seq + " is not above " + lastSeqIn + ")";
			lastSeqIn = seq;
			return null;
		}
	}
}
