#region Using declarations
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Text;
#endregion

// A ZMTP 3.1 DEALER over one TCP connection (rfc.zeromq.org/spec/37, NULL mechanism), so that the
// NinjaScript needs no third-party DLL (NetMQ drags half of .NET Standard into bin\Custom).
// This is the wire layer only: one connection, blocking reads, PING answered with PONG. Reconnect
// with backoff and the bounded send queue that never blocks NT8's threads sit above it (next step).
namespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge
{
	public sealed class ZmtpException : Exception
	{
		public ZmtpException(string message) : base(message) { }
	}

	public sealed class ZmtpDealer : IDisposable
	{
		private const byte FlagMore = 1, FlagLong = 2, FlagCommand = 4;
		private const int GreetingSize = 64;
		private readonly object sendLock = new object();
		private TcpClient tcp;
		private NetworkStream stream;

		/// <summary>Largest frame accepted from the peer; a larger one closes the connection (garbage or hostile).</summary>
		public long MaxFrameBytes = 1 << 20;
		public string PeerSocketType { get; private set; }
		public long PingsAnswered { get; private set; }

		/// <summary>Connect to "tcp://host:port", exchange greetings and READY; throws ZmtpException on failure.</summary>
		public void Connect(string endpoint, int timeoutMs)
		{
			string hostPort = endpoint.StartsWith("tcp://", StringComparison.Ordinal) ? endpoint.Substring(6) : endpoint;
			int colon = hostPort.LastIndexOf(':');
			if (colon < 0)
				throw new ZmtpException("endpoint '" + endpoint + "' is not tcp://host:port");
			tcp = new TcpClient { NoDelay = true };
			IAsyncResult ar = tcp.BeginConnect(hostPort.Substring(0, colon), int.Parse(hostPort.Substring(colon + 1)), null, null);
			if (!ar.AsyncWaitHandle.WaitOne(timeoutMs))
			{
				tcp.Close();
				throw new ZmtpException("no connection to " + endpoint + " within " + timeoutMs + " ms");
			}
			tcp.EndConnect(ar);
			stream = tcp.GetStream();
			stream.ReadTimeout = timeoutMs;
			stream.WriteTimeout = timeoutMs;
			byte[] greeting = new byte[GreetingSize];
			greeting[0] = 0xFF;
			greeting[9] = 0x7F;
			greeting[10] = 3;  // version 3.1
			greeting[11] = 1;
			Encoding.ASCII.GetBytes("NULL", 0, 4, greeting, 12);
			stream.Write(greeting, 0, GreetingSize);  // as-server (byte 32) and filler stay 0
			byte[] peer = ReadExactly(GreetingSize);
			if (peer[0] != 0xFF || peer[9] != 0x7F)
				throw new ZmtpException("the peer is not a ZeroMQ socket (bad greeting signature)");
			if (peer[10] < 3)
				throw new ZmtpException("the peer speaks ZMTP " + peer[10] + ".x; 3.0 or later is needed");
			if (Encoding.ASCII.GetString(peer, 12, 20).TrimEnd('\0') != "NULL")
				throw new ZmtpException("the peer asks for a security mechanism other than NULL");
			SendCommand("READY", Metadata("Socket-Type", "DEALER"));
			byte[] ready = ReadFrame(out byte flags);
			if ((flags & FlagCommand) == 0 || CommandName(ready) != "READY")
				throw new ZmtpException("the peer did not send READY");
			Dictionary<string, string> props = ParseMetadata(ready, 1 + ready[0]);
			string type;
			PeerSocketType = props.TryGetValue("Socket-Type", out type) ? type : "";
			if (PeerSocketType != "ROUTER" && PeerSocketType != "DEALER")
				throw new ZmtpException("a DEALER cannot talk to a " + PeerSocketType + " socket");
			stream.ReadTimeout = System.Threading.Timeout.Infinite;
		}

		/// <summary>Send one message of several frames; safe from any thread.</summary>
		public void Send(byte[][] frames)
		{
			lock (sendLock)
			{
				for (int i = 0; i < frames.Length; i++)
					WriteFrame(frames[i], i < frames.Length - 1 ? FlagMore : (byte)0);
				stream.Flush();
			}
		}

		/// <summary>The next message, or null when none starts within timeoutMs. Answers PING; skips other commands.</summary>
		public byte[][] Receive(int timeoutMs)
		{
			List<byte[]> parts = new List<byte[]>();
			// one deadline for the whole call: PINGs answered on the way must not restart the wait
			long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + (long)timeoutMs * System.Diagnostics.Stopwatch.Frequency / 1000;
			while (true)
			{
				long leftUs = (deadline - System.Diagnostics.Stopwatch.GetTimestamp()) * 1000000 / System.Diagnostics.Stopwatch.Frequency;
				if (parts.Count == 0 && !tcp.Client.Poll((int)Math.Max(0, leftUs), SelectMode.SelectRead))
					return null;
				byte flags;
				byte[] body = ReadFrame(out flags);
				if ((flags & FlagCommand) != 0)
				{
					if (CommandName(body) == "PING")
						Pong(body);
					continue;
				}
				parts.Add(body);
				if ((flags & FlagMore) == 0)
					return parts.ToArray();
			}
		}

		/// <summary>Send a ZMTP PING (TTL in deciseconds, context echoed by the peer's PONG).</summary>
		public void Ping(ushort ttlDeciseconds, byte[] context)
		{
			byte[] data = new byte[2 + context.Length];
			data[0] = (byte)(ttlDeciseconds >> 8);
			data[1] = (byte)ttlDeciseconds;
			Buffer.BlockCopy(context, 0, data, 2, context.Length);
			SendCommand("PING", data);
		}

		private void Pong(byte[] ping)
		{
			int contextAt = 1 + ping[0] + 2;  // name, then a 2-byte TTL, then the context
			int n = Math.Max(0, ping.Length - contextAt);
			byte[] context = new byte[n];
			if (n > 0)
				Buffer.BlockCopy(ping, contextAt, context, 0, n);
			SendCommand("PONG", context);
			PingsAnswered++;
		}

		private void SendCommand(string name, byte[] data)
		{
			byte[] body = new byte[1 + name.Length + data.Length];
			body[0] = (byte)name.Length;
			Encoding.ASCII.GetBytes(name, 0, name.Length, body, 1);
			Buffer.BlockCopy(data, 0, body, 1 + name.Length, data.Length);
			lock (sendLock)
			{
				WriteFrame(body, FlagCommand);
				stream.Flush();
			}
		}

		private void WriteFrame(byte[] body, byte flags)
		{
			if (body.Length > 255)
			{
				byte[] head = new byte[9];
				head[0] = (byte)(flags | FlagLong);
				long n = body.Length;
				for (int i = 0; i < 8; i++)
					head[8 - i] = (byte)(n >> (8 * i));  // network byte order
				stream.Write(head, 0, 9);
			}
			else
			{
				stream.WriteByte(flags);
				stream.WriteByte((byte)body.Length);
			}
			stream.Write(body, 0, body.Length);
		}

		private byte[] ReadFrame(out byte flags)
		{
			flags = ReadExactly(1)[0];
			long size;
			if ((flags & FlagLong) != 0)
			{
				byte[] b = ReadExactly(8);
				size = 0;
				for (int i = 0; i < 8; i++)
					size = (size << 8) | b[i];
			}
			else
			{
				size = ReadExactly(1)[0];
			}
			if (size < 0 || size > MaxFrameBytes)
			{
				Dispose();
				throw new ZmtpException("the peer sent a frame of " + size + " bytes (limit " + MaxFrameBytes + "); connection closed");
			}
			return ReadExactly((int)size);
		}

		private byte[] ReadExactly(int n)
		{
			byte[] buf = new byte[n];
			int got = 0;
			while (got < n)
			{
				int r = stream.Read(buf, got, n - got);
				if (r <= 0)
					throw new ZmtpException("the peer closed the connection");
				got += r;
			}
			return buf;
		}

		private static string CommandName(byte[] body)
		{
			if (body.Length == 0 || body[0] + 1 > body.Length)
				throw new ZmtpException("malformed command frame");
			return Encoding.ASCII.GetString(body, 1, body[0]);
		}

		private static byte[] Metadata(string name, string value)
		{
			byte[] v = Encoding.ASCII.GetBytes(value);
			byte[] m = new byte[1 + name.Length + 4 + v.Length];
			m[0] = (byte)name.Length;
			Encoding.ASCII.GetBytes(name, 0, name.Length, m, 1);
			int at = 1 + name.Length;
			m[at] = (byte)(v.Length >> 24);
			m[at + 1] = (byte)(v.Length >> 16);
			m[at + 2] = (byte)(v.Length >> 8);
			m[at + 3] = (byte)v.Length;
			Buffer.BlockCopy(v, 0, m, at + 4, v.Length);
			return m;
		}

		private static Dictionary<string, string> ParseMetadata(byte[] body, int at)
		{
			Dictionary<string, string> props = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
			while (at < body.Length)
			{
				int nameLen = body[at];
				if (at + 1 + nameLen + 4 > body.Length)
					throw new ZmtpException("malformed READY metadata");
				string name = Encoding.ASCII.GetString(body, at + 1, nameLen);
				at += 1 + nameLen;
				int valueLen = (body[at] << 24) | (body[at + 1] << 16) | (body[at + 2] << 8) | body[at + 3];
				at += 4;
				if (valueLen < 0 || at + valueLen > body.Length)
					throw new ZmtpException("malformed READY metadata");
				props[name] = Encoding.ASCII.GetString(body, at, valueLen);
				at += valueLen;
			}
			return props;
		}

		public void Dispose()
		{
			if (tcp != null)
				tcp.Close();
			tcp = null;
		}
	}
}
